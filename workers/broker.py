"""kombu's Redis transport, minus a redis-py client built for every broker operation.

kombu's Redis channel builds a new redis-py client (`Channel._create_client`) for each
operation on its pool: every message received (its "unacked" bookkeeping) and every
acknowledgement, each such client copying redis-py's table of response callbacks. That was a
twentieth of the worker's CPU per refresh (py-spy). A client over a pool keeps no state of its
own and is shared by threads and greenlets alike, so one client per pool serves them all.
Celery picks this transport for redis:// and sentinel:// brokers (`broker_transport`,
workers/app.py); the messages and keys are kombu's own.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class _OneClientPerPool:
    """The mixin: `_create_client` hands out one client per pool (a new one when the channel's
    pool is replaced, after a reconnect)."""

    _herdless_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool  # type: ignore[attr-defined]
        client = self._herdless_client
        if client is None or client.connection_pool is not pool:
            client = self._herdless_client = super()._create_client()  # type: ignore[misc]
        return client


class Channel(_OneClientPerPool, kombu_redis.Channel):  # type: ignore[misc]
    pass


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelChannel(_OneClientPerPool, kombu_redis.SentinelChannel):  # type: ignore[misc]
    pass


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


def broker_transport(broker_url: str) -> str | None:
    """The transport Celery should use for this broker URL (None: kombu's choice)."""
    if broker_url.startswith("redis://"):
        return "workers.broker:Transport"
    if broker_url.startswith("sentinel://"):
        return "workers.broker:SentinelTransport"
    return None
