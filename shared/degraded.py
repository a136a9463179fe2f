"""Degraded mode: while Redis is unreachable, answer what the near-cache holds as STALE, refuse the rest fast.

When a read finds Redis unreachable (a refused or broken connection, a timeout: not a full
connection pool, which is load, nor a script error), ``RedisHealth`` marks the process
degraded: from then on reads do not try Redis at all (no connect timeout per request), a
background probe PINGs it every ``PROBE_SECONDS`` on a connection of its own, and the first
answer ends degraded mode by itself. Meanwhile ``answer_from_memory`` serves a value the
near-cache holds within its stale-if-error bound (``stale_if_error_until_ms``) as STALE and
answers every other key ``503 redis_unavailable`` with ``Retry-After``. Which values the
near-cache may still vouch for, and why none was purged before the outage began, is told in
shared/nearcache.py. Recovery needs nothing special: reads go back to the READ script, whose
lease lets one refresh per key through, so a Redis that returns empty costs the origin one call
per key, at the workers' ORIGIN_MAX_CONCURRENCY at most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import metrics
from shared.answers import Answer, Refused, Served, Unstored, refused_by_failure
from shared.connection import PoolExhausted
from shared.namespaces import Namespace
from shared.nearcache import NearCache, NoNearCache
from shared.origin import OriginError
from shared.origin_adapters import OriginAdapters
from shared.protocol import AnswerOutcome, Decision, FailureCode, Fallback, LeaseState, Refusal
from shared.replies import ReadResult

log = logging.getLogger("herdless.degraded")

PROBE_SECONDS = 0.25  # how often a degraded process asks Redis whether it is back
RETRY_AFTER_SECONDS = 1.0
UNAVAILABLE_DETAIL = "the cache store is unreachable and this web process holds no servable value for the key"
BUSY_DETAIL = "the cache store is unreachable and this web process's calls to the namespace's origin are all busy"


def means_unreachable(exc: RedisError) -> bool:
    """Whether a Redis error says the server cannot be reached (as opposed to a busy pool or an
    error the server answered with)."""
    if isinstance(exc, RedisTimeoutError):
        return True
    # A full pool (every connection stayed busy for its wait) is load: Redis may be fine.
    return isinstance(exc, RedisConnectionError) and not isinstance(exc, PoolExhausted)


def stale_if_error_until_ms(r: ReadResult, ns: Namespace) -> float:
    """Until when (Redis clock) a read's value may be answered while Redis is unreachable: past
    soft by its stale window and its stale-if-error allowance, as RECORD_FAILURE keeps a value
    through an origin outage; only within its fresh life for a cached 404 or a strategy that
    never serves stale values (lock). 0 when the read found no value."""
    if r.soft_ms is None:
        return 0.0
    if r.negative or not ns.serves_stale:
        return float(r.soft_ms)
    stale = ns.stale_ttl_ms if r.stale_ms is None else r.stale_ms
    allowance = ns.stale_if_error_seconds * 1000 if r.stale_if_error_ms is None else r.stale_if_error_ms
    return float(r.soft_ms + stale + allowance)


# A read that found a refresh of its key under way, or the key cooling down after a failed one.
_REFRESH_PENDING = (LeaseState.HELD, LeaseState.QUEUED, LeaseState.COOLDOWN)


def pending_until_ms(r: ReadResult, ns: Namespace, *, held_back: bool = False) -> float | None:
    """Until when (Redis clock) the near-cache may answer a read's EARLY or STALE value itself,
    as Redis would answer every read meanwhile: while the lease another refresh holds (or the
    key's cooldown) lasts, within the value's stale window (only its fresh life for a cached 404
    or a strategy that never serves stale values). The refresh's publish ends it sooner. None
    for any other answer, and for the read that won the lease: its refresh is not sent yet --
    unless it gives its early refresh back (`held_back`): then until the value expires. Never
    for a proxy namespace: whether a stored response may answer a request, stale or not, is
    RFC 9111's to decide per request (shared/proxy_read.py), so Redis answers every read.

    Without it, every read of a hot key between its HIT moment and the refresh's landing went
    to Redis to hear "EARLY" or "STALE, refresh under way": under overload, where refreshes run
    seconds late, that was most of the web tier's reads."""
    if ns.is_proxy or r.soft_ms is None:
        return None
    if held_back:
        return float(r.soft_ms)
    if r.won_lease or r.decision not in (Decision.EARLY, Decision.STALE):
        return None
    if LeaseState(r.lease_state) not in _REFRESH_PENDING or r.lease_pttl_ms <= 0:
        return None
    end = r.soft_ms
    if not r.negative and ns.serves_stale:
        end += ns.stale_ttl_ms if r.stale_ms is None else r.stale_ms
    return float(min(r.now_ms + r.lease_pttl_ms, end))


def answer_from_memory(
    near_cache: NearCache[ReadResult] | NoNearCache[ReadResult], ns: Namespace, key: str, fallback: OriginFallback
) -> Answer:
    """A degraded process's answer: the held value as STALE; else, for a namespace with
    ``fallback = "origin"``, the origin's; else a fast 503."""
    held = near_cache.get_stale(ns.name, key)
    if held is not None:
        metrics.DEGRADED_ANSWERS.labels(ns.name, "stale").inc()
        return Served(held.entry, AnswerOutcome.STALE, held.redis_now_ms, from_near_cache=True)
    if ns.fallback is Fallback.ORIGIN:
        return fallback.fetch(ns, key)
    metrics.DEGRADED_ANSWERS.labels(ns.name, "refused").inc()
    return Refused(503, Refusal.REDIS_UNAVAILABLE, UNAVAILABLE_DETAIL, RETRY_AFTER_SECONDS)


class _Call:
    __slots__ = ("done", "answer")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: Answer | None = None


class OriginFallback:
    """Cold keys of a ``fallback = "origin"`` namespace while Redis is unreachable: the origin
    called from this process, one call per key at a time (readers of a key being fetched share
    its answer) and at most the namespace's ``origin_max_concurrency`` calls at once (past that
    a new key is refused at once). Nothing is stored: the answer goes to this read alone
    (``Cache-Control: no-store``), and there is no shared breaker or slot without Redis."""

    def __init__(self, origins: OriginAdapters) -> None:
        self._origins = origins
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], _Call] = {}
        self._in_flight: dict[str, int] = {}

    def fetch(self, ns: Namespace, key: str) -> Answer:
        target = (ns.name, key)
        with self._lock:
            call = self._calls.get(target)
            leader = call is None
            if call is None:
                if self._in_flight.get(ns.name, 0) >= ns.origin_max_concurrency:
                    metrics.DEGRADED_ANSWERS.labels(ns.name, "refused").inc()
                    return Refused(503, Refusal.REDIS_UNAVAILABLE, BUSY_DETAIL, RETRY_AFTER_SECONDS)
                call = self._calls[target] = _Call()
                self._in_flight[ns.name] = self._in_flight.get(ns.name, 0) + 1
        if not leader:
            call.done.wait(ns.origin_timeout_seconds + 1)
            return call.answer or refused_by_failure(FailureCode.ORIGIN_TIMEOUT, RETRY_AFTER_SECONDS)
        try:
            call.answer = self._call_origin(ns, key)
        finally:
            with self._lock:
                del self._calls[target]
                self._in_flight[ns.name] -= 1
            call.done.set()
        return call.answer

    def _call_origin(self, ns: Namespace, key: str) -> Answer:
        metrics.DEGRADED_ANSWERS.labels(ns.name, "origin").inc()
        try:
            resp = self._origins.fetch_whole(ns, key)
        except OriginError as exc:
            log.warning("origin fallback for namespace %s failed: %s", ns.name, exc.code)
            return refused_by_failure(exc.code, RETRY_AFTER_SECONDS)
        if resp is None:
            return Refused(404, "not_found", "the origin has no value for this key")
        return Unstored(resp.body, resp.content_type)


class RedisHealth:
    """Whether this process finds Redis reachable. ``failed`` marks it down and starts the probe;
    the probe's first success (``probe`` returns without raising) marks it up again and runs
    ``on_recovery`` (e.g. drop the pool's connections, all broken by the outage)."""

    def __init__(
        self,
        probe: Callable[[], object],
        *,
        on_recovery: Callable[[], object] | None = None,
        interval_seconds: float = PROBE_SECONDS,
    ) -> None:
        self._probe = probe
        self._on_recovery = on_recovery
        self.interval_seconds = interval_seconds
        self._lock = threading.Lock()
        self._down_since: float | None = None  # time.monotonic()
        self._stop = threading.Event()
        self.outages = 0  # times this process went degraded

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def down_for(self) -> float | None:
        """Seconds since this process found Redis unreachable; None while it is reachable."""
        since = self._down_since
        return None if since is None else time.monotonic() - since

    def failed_with(self, exc: RedisError) -> bool:
        """Mark Redis down when `exc` says it is unreachable; True if it does."""
        if not means_unreachable(exc):
            return False
        self.failed(type(exc).__name__)
        return True

    def failed(self, reason: str = "unreachable") -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self.outages += 1
            threading.Thread(target=self._run, args=(self.outages,), name="redis-probe", daemon=True).start()
        metrics.REDIS_DEGRADED.set(1)
        log.warning("Redis unreachable (%s): answering from memory, probing every %.2fs", reason, self.interval_seconds)

    def stop(self) -> None:
        self._stop.set()

    def reachable(self) -> None:
        """Redis answered someone in this process (the subscription's handshake): end degraded
        mode now rather than at the next probe. The subscription, back, has just flushed the
        values held for the outage, so waiting for the probe would only refuse their keys."""
        if self._down_since is not None:
            self._recovered()

    def _run(self, outage: int) -> None:
        # Until Redis answers, or a later outage (after reachable() ended this one) probes itself.
        while self.down and self.outages == outage and not self._stop.wait(self.interval_seconds):
            try:
                self._probe()
            except Exception:  # noqa: BLE001 - any failure means "still down"
                continue
            self._recovered()

    def _recovered(self) -> None:
        if self._on_recovery is not None and self.down:
            try:  # before reads go back to Redis, so none of them takes a broken connection
                self._on_recovery()
            except Exception:  # noqa: BLE001 - best effort: broken connections fail once more
                log.warning("could not reset the Redis connections after the outage")
        with self._lock:
            if self._down_since is None:
                return
            down_for = time.monotonic() - self._down_since
            self._down_since = None
        metrics.REDIS_DEGRADED.set(0)
        log.warning("Redis reachable again after %.1fs: reading through it again", down_for)
