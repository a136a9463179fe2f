"""Redis clients for both tiers: a URL, a Cluster or the primary of Sentinel; no retries in the driver; a subscriber."""

from __future__ import annotations

import select
from typing import Any

import redis
from redis._parsers.hiredis import _HiredisParser
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool
from redis.utils import HIREDIS_AVAILABLE

from shared.settings import Settings


def _driver_info() -> dict[str, Any]:
    """redis-py builds its CLIENT SETINFO data per new connection, reading the installed
    package's metadata from disk each time (about a millisecond): a burst that grows a pool by
    hundreds of connections spent most of its time there. One object, built once, is shared."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before 7 has no driver_info (and reads no metadata per connection)
        return {}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


_DRIVER_INFO = _driver_info()


def _os_poll() -> Any:
    """The operating system's poll, even where gevent has patched the select module."""
    try:
        from gevent.monkey import get_original
    except ImportError:
        return select.poll
    return get_original("select", "poll")


_POLL = _os_poll() if hasattr(select, "poll") else None


class ReadinessCheckedParser(_HiredisParser):
    """hiredis's parser with a cheaper check of a pooled connection before each command.

    redis-py asks every connection it takes from the pool whether it has unread data
    (`can_read(0)`: a connection given back mid-reply must not be reused). Under gevent's
    monkey patching that check went through gevent's `select.poll`, which builds and starts a
    hub watcher per call: a third of each command's CPU in both tiers (py-spy; 54 -> 31 us a
    GET measured). The check never waits, so the operating system's own poll answers it as
    well; a socket it finds readable (or with bytes buffered) gets redis-py's full check."""

    def can_read(self, timeout: float = 0) -> bool:
        sock = getattr(self, "_sock", None)
        reader = getattr(self, "_reader", None)
        if timeout == 0 and _POLL is not None and sock is not None and reader is not None and not reader.has_data():
            pending = getattr(sock, "pending", None)  # TLS: decrypted bytes above the socket
            if not (pending and pending()):
                poller = _POLL()
                poller.register(sock, select.POLLIN)
                if not poller.poll(0):
                    return False
        return bool(super().can_read(timeout))


def connection_parser() -> dict[str, Any]:
    """The parser_class option of every client of ours (hiredis is a dependency)."""
    return {"parser_class": ReadinessCheckedParser} if HIREDIS_AVAILABLE else {}


class PoolExhausted(redis.ConnectionError):
    """Every connection of this process's pool stayed busy for the whole pool wait: the process
    has more commands in flight than its pool serves in that time. Redis itself may be fine, so
    the web tier answers this as overloaded, not as a Redis that is down."""


class WaitingConnectionPool(redis.BlockingConnectionPool):
    """redis-py's blocking pool, whose "No connection available." (a plain ConnectionError, the
    same class a refused connect raises) is told apart as PoolExhausted."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)
        except redis.ConnectionError as exc:
            if str(exc) == "No connection available.":
                raise PoolExhausted(str(exc)) from None
            raise


def make_redis(
    settings: Settings,
    *,
    url: str | None = None,
    pool_size: int | None = None,
    pool_wait_seconds: float | None = None,
    **kwargs: Any,
) -> Any:
    """A Redis client for the cache: a plain client, a cluster client when REDIS_CLUSTER=true, or
    the primary the sentinels of REDIS_SENTINELS name for REDIS_SENTINEL_MASTER.

    pool_size caps the connections a process may open. With pool_wait_seconds, a caller that
    finds all of them busy waits up to that long for one (a blocking pool) instead of failing:
    a burst of a thousand requests in one gevent process then shares a few dozen connections,
    each command taking well under a millisecond, rather than opening a thousand at once, which
    made Redis's accept queue overflow and connects time out."""
    url = url or settings.redis_url
    opts: dict[str, Any] = {
        "socket_timeout": kwargs.pop("socket_timeout", 2.0),
        "socket_connect_timeout": kwargs.pop("socket_connect_timeout", 1.0),
        "health_check_interval": kwargs.pop("health_check_interval", 0),
    }
    # Fail fast: a request must answer within a second while Redis is down, not retry for ten.
    opts.setdefault("retry", Retry(NoBackoff(), 0))
    opts.update(_DRIVER_INFO)
    opts.update(connection_parser())
    opts.update(kwargs)
    if pool_size:
        opts["max_connections"] = pool_size
    if settings.redis_cluster:
        opts.pop("health_check_interval", None)
        return RedisCluster.from_url(url, **opts)
    if settings.redis_sentinels:
        return _sentinel_primary(settings, url, opts, pool_wait_seconds if pool_size else None)
    if pool_size and pool_wait_seconds is not None:
        pool = WaitingConnectionPool.from_url(url, timeout=pool_wait_seconds, **opts)
        return redis.Redis(connection_pool=pool)
    return redis.Redis.from_url(url, **opts)


class _WaitingSentinelPool(SentinelConnectionPool, WaitingConnectionPool):
    """A Sentinel-managed pool whose callers wait for a free connection, as WaitingConnectionPool's
    do (and whose exhaustion is PoolExhausted too)."""


def _sentinel_primary(settings: Settings, url: str, opts: dict[str, Any], pool_wait_seconds: float | None) -> Any:
    """The client of the current primary: every new connection asks the sentinels where it is, so
    after a failover the connections broken by the old primary's loss reconnect to the new one.
    REDIS_URL still gives the password, user, database and TLS; its host and port are unused.
    The sentinels are asked with the same timeouts (and no password: they rarely have one)."""
    params = {k: v for k, v in parse_url(url).items() if k not in ("host", "port", "path")}
    if params.pop("connection_class", None) is SSLConnection:
        params["ssl"] = True
    sentinel = Sentinel(
        settings.sentinel_addresses,
        sentinel_kwargs={k: v for k, v in opts.items() if k.startswith("socket_") and v is not None},
        **{**params, **opts},
    )
    pool_class: type[SentinelConnectionPool] = SentinelConnectionPool
    extra: dict[str, Any] = {}
    if pool_wait_seconds is not None:
        pool_class, extra = _WaitingSentinelPool, {"timeout": pool_wait_seconds}
    return sentinel.master_for(settings.redis_sentinel_master, connection_pool_class=pool_class, **extra)


# CLIENT LIST shows each web process's subscription under this name.
SUBSCRIBER_NAME = "herdless-web-subscriber"


def pubsub_client(settings: Settings) -> Any:
    """A dedicated client for the long-lived subscription (no read timeout on it)."""
    return make_redis(settings, socket_timeout=None, health_check_interval=30, client_name=SUBSCRIBER_NAME)
