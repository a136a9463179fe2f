"""Redis clients for both tiers: a URL, a Cluster or the primary of Sentinel; no retries in the driver; a subscriber."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

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


class _Poller:
    """One readiness check: the native poll when it must not wait (timeout 0), gevent's when it may."""

    def __init__(self, native: Any, cooperative: Any) -> None:
        self._native, self._cooperative = native, cooperative
        self._registered: list[tuple[Any, int]] = []

    def register(self, fd: Any, mask: int) -> None:
        self._registered.append((fd, mask))

    def poll(self, timeout: float | None = None) -> Any:
        poller = (self._native if timeout == 0 else self._cooperative)()
        for fd, mask in self._registered:
            poller.register(fd, mask)
        return poller.poll(timeout)


class _NativePoll:
    """What redis-py's hiredis parser reads of the select module: poll (see _Poller) and POLLIN."""

    def __init__(self, native: Any, cooperative: Any, pollin: int) -> None:
        self.POLLIN = pollin
        self._native, self._cooperative = native, cooperative

    def poll(self) -> _Poller:
        return _Poller(self._native, self._cooperative)


def native_readiness_poll() -> bool:
    """Under gevent, let redis-py check a pooled connection with the native poll. Every command
    takes a connection from the pool, and redis-py first checks that it holds no stray bytes: a
    poll with timeout 0. gevent's patched poll makes that a round of the event loop (watchers
    started, the greenlet parked, the hub run): profiled under load it was a third of a web
    process's CPU, and a GET took 1.5-2.5x as long. The native poll with timeout 0 never blocks,
    so it is as safe in a greenlet as anywhere; a check that may wait (a subscriber's
    get_message(timeout=...)) keeps gevent's poll, or it would stop the whole process. Without
    gevent's patch, nothing changes (False)."""
    try:
        from gevent import monkey
        from redis._parsers import hiredis as parser
    except ImportError:
        return False
    if not monkey.is_module_patched("select") or not hasattr(parser, "select"):
        return False
    native = monkey.get_original("select", "poll")
    if isinstance(parser.select, _NativePoll) or not callable(native):
        return isinstance(parser.select, _NativePoll)
    parser.select = _NativePoll(native, parser.select.poll, parser.select.POLLIN)  # type: ignore[assignment]
    return True


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
    native_readiness_poll()
    opts: dict[str, Any] = {
        "socket_timeout": kwargs.pop("socket_timeout", 2.0),
        "socket_connect_timeout": kwargs.pop("socket_connect_timeout", 1.0),
        "health_check_interval": kwargs.pop("health_check_interval", 0),
    }
    # Fail fast: a request must answer within a second while Redis is down, not retry for ten.
    opts.setdefault("retry", Retry(NoBackoff(), 0))
    opts.update(_DRIVER_INFO)
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
