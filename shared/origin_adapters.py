"""One process's origin adapters, built once per namespace, and the lifetimes of their answers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from shared import metrics
from shared.freshness import CacheHeaders, CachePolicy, cache_policy
from shared.namespaces import Namespace
from shared.origin import IDLE_CONNECTIONS, NotFound, NotModified, Origin, OriginError, OriginResponse, make_origin

log = logging.getLogger("herdless.engine")

T = TypeVar("T")


class BuiltOnce(Generic[T]):
    """Objects built on first use, one per name (a namespace's origin, an origin's breaker or
    slots), however many threads or greenlets ask at once."""

    def __init__(self) -> None:
        self._built: dict[str, T] = {}
        self._lock = threading.Lock()

    def get(self, name: str, build: Callable[[], T]) -> T:
        value = self._built.get(name)
        if value is None:
            with self._lock:
                value = self._built.get(name)
                if value is None:
                    value = self._built[name] = build()
        return value


class OriginAdapters:
    """The origin of each namespace, built on first use; the refresher, the read path's naive
    strategy and a degraded process's fallback all call origins through it. Thread- and greenlet-safe."""

    def __init__(self, max_bytes: int, connections: int = IDLE_CONNECTIONS) -> None:
        self._max_bytes, self._connections = max_bytes, connections
        self._origins: BuiltOnce[Origin] = BuiltOnce()
        self._lock = threading.Lock()
        self._malformed_reported: set[str] = set()  # origins whose bad Cache-Control was logged

    def get(self, ns: Namespace) -> Origin:
        return self._origins.get(ns.name, lambda: make_origin(ns, self._max_bytes, self._connections))

    def fetch_whole(self, ns: Namespace, key: str) -> OriginResponse | None:
        """One unconditional call from the web tier (the naive strategy; a degraded process's
        origin fallback), counted as the refresher counts its calls: the answer, or None for a
        404. Raises the OriginError (counted) when the call failed."""
        t0 = time.perf_counter()
        try:
            resp = self.get(ns).fetch(key, deadline=time.monotonic() + ns.origin_timeout_seconds)
            if isinstance(resp, NotModified):
                raise OriginError("origin answered 304 to a request that was not conditional")
            metrics.ORIGIN_CALLS.labels(ns.name, "ok").inc()
            metrics.ORIGIN_BYTES.labels(ns.name).inc(len(resp.body))
            return resp
        except NotFound:
            metrics.ORIGIN_CALLS.labels(ns.name, "not_found").inc()
            return None
        except OriginError as exc:
            metrics.ORIGIN_CALLS.labels(ns.name, exc.outcome).inc()
            raise
        finally:
            metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)

    def cache_policy(self, ns: Namespace, headers: CacheHeaders) -> CachePolicy:
        """Lifetimes of one origin answer (shared/freshness.py). A Cache-Control that does not
        parse is logged once per origin in this process, not once per call."""
        policy = cache_policy(ns, headers, time.time())
        if policy.malformed and ns.origin_name not in self._malformed_reported:
            with self._lock:
                first = ns.origin_name not in self._malformed_reported
                self._malformed_reported.add(ns.origin_name)
            if first:
                log.warning(
                    "origin %s sent a malformed Cache-Control (%s): namespace %s uses its own TTLs "
                    "for such answers; reported once per origin",
                    ns.origin_name,
                    policy.malformed,
                    ns.name,
                )
        return policy
