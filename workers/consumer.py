"""The worker's broker consumer: reconnects within a second once the broker is back, and
survives a broker loss that strikes while an acknowledgement is in flight."""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery.worker.consumer import Consumer

log = logging.getLogger("herdless.worker")

# kombu's defaults sleep 2, 4, 6 ... up to 30 s between attempts, so after a broker (Redis) restart
# refreshes could stay stuck for up to 30 s while the web tier already answers again.
RECONNECT_INTERVALS = {"interval_start": 0.25, "interval_step": 0.25, "interval_max": 1.0}


class PromptReconnectConsumer(Consumer):  # type: ignore[misc]
    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_INTERVALS)
        return super().ensure_connected(conn)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        # When the broker vanished with an ack in flight, kombu's Redis channel tries to restore the
        # unacked message while closing a connection Celery already collected, and raises
        # AttributeError ('NoneType' has no 'hostname'): the consumer, and so the worker, died for
        # good. The connection is already detached at that point; go on and reconnect. The message
        # is not lost: it stays in the broker's unacked set and is restored after the visibility timeout.
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError:
            log.warning("broker connection lost with an acknowledgement in flight; reconnecting")
