"""The refresh of one key: lease check, origin call through the breaker, fenced write, publish.

Kept free of Celery so it can be read (and tested) on its own; workers/tasks.py wraps it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

from shared import metrics
from shared.breaker import BreakerOpen, OriginBreaker
from shared.namespaces import Namespace, load_namespaces
from shared.origin import NotFound, Origin, OriginError, make_origin
from shared.settings import Settings
from shared.store import CacheStore, make_redis

log = logging.getLogger("herdless.refresh")


class LeaseRenewer:
    """Extends the lease at a third of its TTL while the origin call runs (daemon thread)."""

    def __init__(self, store: CacheStore, ns: Namespace, key: str, token: str) -> None:
        self._store, self._ns, self._key, self._token = store, ns, key, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
        self.lost = False

    def _run(self) -> None:
        interval = self._store.settings.lease_ttl_seconds / 3
        while not self._stop.wait(interval):
            try:
                if not self._store.renew_lease(self._ns, self._key, self._token):
                    self.lost = True
                    return
            except Exception:  # noqa: BLE001 - Redis blinked; the next tick tries again
                log.warning("lease renewal failed for namespace %s", self._ns.name)

    def __enter__(self) -> LeaseRenewer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


@dataclass
class RefreshContext:
    """Per-process state of a worker: one Redis client, one origin adapter per namespace,
    one breaker per origin. Built lazily after fork."""

    settings: Settings
    namespaces: dict[str, Namespace]
    store: CacheStore
    breaker_client: object
    origins: dict[str, Origin] = field(default_factory=dict)
    breakers: dict[str, OriginBreaker] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> RefreshContext:
        client = make_redis(settings, socket_timeout=max(2.0, settings.lease_ttl_seconds / 3))
        namespaces = load_namespaces(settings)
        metrics.init_worker_series(namespaces, {ns.origin_name for ns in namespaces.values()})
        return cls(settings=settings, namespaces=namespaces, store=CacheStore(client, settings), breaker_client=client)

    def origin(self, ns: Namespace) -> Origin:
        if ns.name not in self.origins:
            self.origins[ns.name] = make_origin(ns, self.settings.origin_max_bytes)
        return self.origins[ns.name]

    def breaker(self, ns: Namespace) -> OriginBreaker:
        if ns.origin_name not in self.breakers:
            self.breakers[ns.origin_name] = OriginBreaker(self.breaker_client, ns.origin_name, self.settings)
        return self.breakers[ns.origin_name]


_context: RefreshContext | None = None
_context_pid: int | None = None


def get_context(settings: Settings) -> RefreshContext:
    global _context, _context_pid
    if _context is None or _context_pid != os.getpid():
        _context, _context_pid = RefreshContext.build(settings), os.getpid()
    return _context


def run_refresh(ctx: RefreshContext, namespace: str, key: str, token: str, won_at_ms: int) -> str:
    """Refresh one key; returns the outcome label recorded in herdless_refresh_total."""
    ns = ctx.namespaces.get(namespace)
    if ns is None:
        log.warning("refresh for unknown namespace %r dropped", namespace)
        return "lost_lease"
    store = ctx.store
    outcome = _refresh(ctx, store, ns, key, token, won_at_ms)
    metrics.REFRESHES.labels(ns.name, outcome).inc()
    return outcome


def _refresh(ctx: RefreshContext, store: CacheStore, ns: Namespace, key: str, token: str, won_at_ms: int) -> str:
    if not store.claim(ns, key, token):
        # The lease ran out while this task waited, or a purge took it: someone else owns the key.
        return "lost_lease"
    started_ms = store.now_ms()
    t0 = time.perf_counter()
    negative = False
    with LeaseRenewer(store, ns, key, token):
        try:
            response = ctx.breaker(ns).call(ctx.origin(ns).fetch, key)
        except BreakerOpen as exc:
            store.record_failure(ns, key, token, min_cooldown_ms=exc.retry_after_ms, origin_called=False)
            store.publish_ready(ns, key, "error")
            return "breaker_open"
        except NotFound:
            negative, response = True, None
            metrics.ORIGIN_CALLS.labels(ns.name, "not_found").inc()
        except OriginError as exc:
            metrics.ORIGIN_CALLS.labels(ns.name, exc.outcome).inc()
            metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
            log.warning("origin error for namespace %s: %s", ns.name, exc)
            store.record_failure(ns, key, token)
            store.publish_ready(ns, key, "error")
            return "origin_error"
        else:
            metrics.ORIGIN_CALLS.labels(ns.name, "ok").inc()
        metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
    result = store.fenced_write(
        ns,
        key,
        token,
        started_ms=started_ms,
        won_at_ms=won_at_ms,
        value=b"" if response is None else response.body,
        content_type="application/json" if response is None else response.content_type,
        negative=negative,
    )
    if not result.written:
        # A newer value is stored (or the key was purged); waiters may read whatever is there.
        store.publish_ready(ns, key, "ready")
        return "fenced"
    metrics.REFRESH_LAG.labels(ns.name).observe(max(0.0, (result.written_at_ms - won_at_ms) / 1000))
    store.publish_ready(ns, key, "ready")
    return "written"
