"""The worker's broker consumer: reconnects within a second once the broker is back, and
survives a broker loss while refreshes are running."""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery.worker.consumer import Consumer

log = logging.getLogger("herdless.worker")

# kombu's defaults sleep 2, 4, 6 ... up to 30 s between attempts, so after a broker (Redis) restart
# refreshes could stay stuck for up to 30 s while the web tier already answers again.
RECONNECT_INTERVALS = {"interval_start": 0.25, "interval_step": 0.25, "interval_max": 1.0}


def _detach_keeping_settings(connection: Any) -> None:
    # kombu's Connection._do_close_transport, minus `transport.client = None`.
    connection._transport = None


class PromptReconnectConsumer(Consumer):  # type: ignore[misc]
    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_INTERVALS)
        return super().ensure_connected(conn)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        # Celery collects the lost connection, and kombu then unlinks its transport from the
        # connection settings. But refreshes received on it are still running and ack when they
        # finish (acks_late); kombu's Redis channel then needs those settings to reach the broker
        # and raised AttributeError ('NoneType' object has no attribute 'hostname') instead, which
        # Celery treats as unrecoverable: one broker blip during a refresh killed the worker.
        # Keep the settings: the late ack reconnects, or fails with a connection error that Celery
        # logs ("Couldn't ack") and survives; the broker redelivers an unacked message later.
        dying = self.connection
        if dying is not None:
            dying._do_close_transport = functools.partial(_detach_keeping_settings, dying)
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError:
            # The same kombu path, reached while closing; the connection is already detached.
            log.warning("broker connection lost with an acknowledgement in flight; reconnecting")
