"""The refresh runner (worker tier): claim a key's lease, call its origin, then write, revalidate or record the failure.

The read path (``shared/readpath.py``) tells how a key is read and how its lease is won and its
refresh queued; this module tells what happens to the key from there. The Celery task is a thin
adapter over ``Refresher``.

Refresh states of a key
-----------------------

A won lease holds the task's token, and the *queued marker* ``:q`` holds it too. A worker's
claim makes the lease **running** (it holds that run's own token) and the marker a *running*
marker (``r:<task token>``); a failed refresh leaves the lease **cooling down**
(``cd:<token>:<code>``); a write frees it. The marker lives exactly as long as the task's
message: it is cleared when the worker has acknowledged the message (``finish``) or the message
expires unrun (``discard_expired``). Taking a message off the queue also removes it from the
queue's registry of waiting messages (``shared/queuebound.py``); a refresh whose claim or write
Redis refuses at its maxmemory cools its key down and wakes its waiters (``shared/maxmemory.py``).

Refreshes (worker, ``Refresher.run``)
    ``CLAIM`` turns the won lease into the run's own: the lease value becomes a run token that
    no other execution (not even a redelivered copy of the same message) can match, and the
    queued marker a running one. A task whose lease is someone else's stops (``lost_lease``). The
    run waits for a slot of its origin (``ORIGIN_MAX_CONCURRENCY`` across all processes and
    hosts), notes ``started`` on the Redis clock, and calls the origin through the breaker under
    a total deadline (``origin_timeout_seconds``); meanwhile a renewer extends the lease and
    the slot. Then:

    - value or 404 → ``FENCED_WRITE``: it lands only if the lease is still this run's *and* the
      call started after the stored value's call, after any hard purge and after any soft
      purge; it releases the lease and the new value carries a fresh XFetch draw ``u``. Its
      lifetimes are the namespace's, or (``freshness = "origin"``) the answer's Cache-Control,
      clamped (``shared/freshness.py``);
    - 304 (the call was conditional: the stored value has an origin ETag or Last-Modified) →
      ``FENCED_WRITE`` in ``revalidate`` mode, under the same fences and also only while the
      entry whose validator was sent is still the stored one: the stored bytes start a new
      lifetime (new ``at``, ``soft``, ``u``) and no body was transferred;
    - an answer the origin marked ``no-store`` or ``private`` (``freshness = "origin"``) →
      ``FENCED_WRITE`` in ``drop`` mode, same fences: the entry is deleted and the body rides
      in the "ready" message to the readers waiting for it (``HandedOver``), who answer with
      it; later readers find the key absent and wait for a call of their own;
    - failure → ``RECORD_FAILURE``: the lease becomes a cooldown (1 s doubling per failure,
      capped by the breaker's reset timeout, at least until the breaker may half-open) holding
      the failure's code (``origin_timeout``, ``breaker_open``...), which cold reads of the key
      answer with in every web process, and the stale value's stored life is stretched by
      ``STALE_IF_ERROR_SECONDS``. The worker logs the failure with its reason at once (the
      rest goes into a periodic summary: ``shared/refreshlog.py``).

    Either way "ready"/"error" is published for cold-miss waiters (the write script publishes
    "ready" itself); the message also invalidates the key in every web process's near-cache.
    The marker stays until the worker has acknowledged the message (``finish``): a message
    that goes back to the queue because its worker stopped mid-run (requeued when a pool
    process dies, restored when the broker connection closes) is never without its marker.
    Its running marker becomes a waiting one again (``requeued``), so reads keep off the key
    however long the interrupted run's lease has run out; a run that still finishes is
    acknowledged and clears it.

What never happens: two refreshes holding one key's lease; a value older than the stored one
replacing it; a purged value coming back (a purge frees or deletes the lease, and a write needs
it and a start after the purge).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress

from redis.exceptions import OutOfMemoryError

from shared import metrics
from shared.batch_refresh import BatchedRefresher
from shared.breaker import BreakerOpen, OriginBreaker
from shared.freshness import Lifetimes, fixed_lifetimes
from shared.namespaces import Namespace
from shared.origin import NotFound, NotModified, OriginError, OriginResponse
from shared.origin_adapters import BuiltOnce, OriginAdapters
from shared.origin_slots import OriginSlots
from shared.pipeline import raise_first_error, run_pipelined
from shared.protocol import FailureCode, Freshness, RefreshOutcome, RefreshReason
from shared.proxy_refresh import ProxyRefresher
from shared.queuebound import QueueBound
from shared.refreshlog import RefreshLog, RefreshReport
from shared.renewals import LeaseRenewer
from shared.settings import Settings
from shared.store import CacheStore, ClaimedRun, Fence, WriteResult
from shared.tasks import SLOT_WAIT_FACTOR, RefreshRequest

log = logging.getLogger("herdless.engine")

DEPARTED_KEPT = 10_000


class Refresher:
    """One per worker process: runs the refresh tasks it is given, and keeps their keys' queued
    markers in step with their messages (`requeued`, `finished`, `discard_expired`)."""

    def __init__(
        self,
        settings: Settings,
        namespaces: dict[str, Namespace],
        store: CacheStore,
        slots: Callable[[str], OriginSlots],
    ) -> None:
        self.settings = settings
        self.namespaces = namespaces
        self.store = store
        self.queue = QueueBound(store, settings)
        # Every concurrent refresh holds at most one origin connection: keep that many idle.
        self.origins = OriginAdapters(settings.origin_max_bytes, max(8, settings.worker_concurrency))
        self._slots_factory = slots
        self._breakers: BuiltOnce[OriginBreaker] = BuiltOnce()
        self._slots: BuiltOnce[OriginSlots] = BuiltOnce()
        self.refresh_log = RefreshLog()
        # Task tokens whose registry entry this process's runs removed (see `finished`); bounded,
        # for messages whose acknowledgement never comes here (a forgotten one departs twice).
        self._departed: dict[str, None] = {}
        self.proxied = ProxyRefresher(
            settings, store, self.breaker
        )  # the origin call and write of proxy namespaces' keys
        # The batch calls and writes of keys whose namespace has a batch origin.
        self.batched = BatchedRefresher(settings, store, self.origins, self.breaker, self.origin_slots)

    # breakers and slots are built once per origin, on first use
    def breaker(self, ns: Namespace) -> OriginBreaker:
        return self._breakers.get(
            ns.origin_name, lambda: OriginBreaker(self.store.redis, ns.origin_name, self.settings)
        )

    def origin_slots(self, ns: Namespace) -> OriginSlots:
        return self._slots.get(ns.origin_name, lambda: self._slots_factory(ns.origin_name))

    def run(self, req: RefreshRequest) -> RefreshReport:
        """Run one refresh task; returns its outcome and, for a failure, why (for the task's
        state in Flower). Logs a failure at once and the rest in the periodic summary."""
        ns = self.namespaces.get(req.namespace)
        if ns is None:
            self.queue.depart(req.namespace, req.key, req.token, taken=True)
            log.warning("refresh for unknown namespace %r dropped", req.namespace)
            return RefreshReport(RefreshOutcome.UNKNOWN_NAMESPACE)
        report = self._refresh(ns, req)
        metrics.REFRESHES.labels(ns.name, report.outcome).inc()
        self.refresh_log.record(ns.name, req.key, report)
        return report

    def requeued(self, req: RefreshRequest) -> None:
        """This task's message goes back to the queue (its worker is stopping while it runs):
        its marker becomes a waiting one, so no read enqueues a second refresh meanwhile. If the
        run still finishes, its acknowledgement clears the marker (`finished`)."""
        ns = self.namespaces.get(req.namespace)
        if ns is not None and self.store.mark_queued(ns, req.key, req.token):
            self.queue.admit(ns.name, req.key, req.token, force=True)
            # Its entry is back in the registry: whoever takes the message next, or its
            # acknowledgement here if the run still finishes, must take it off again.
            self._departed.pop(req.token, None)

    def finished(self, req: RefreshRequest) -> None:
        """This task's message is acknowledged (or dropped): it will never run again, so the
        next read may enqueue another refresh of the key. Its registry entry went when this
        process's run took the message (`_refresh`); otherwise (a run in another process, or one
        whose departure failed) it goes now."""
        self.finished_many([req])

    def finished_many(self, reqs: list[RefreshRequest]) -> None:
        """`finished` for every key of one acknowledged message, in one round trip."""
        calls = []
        for req in reqs:
            if req.token not in self._departed.keys():
                calls.append(self.queue.depart_call(req.namespace, req.key, req.token))
            self._departed.pop(req.token, None)
            ns = self.namespaces.get(req.namespace)
            if ns is not None:
                calls.append(self.store.finish_call(ns, req.key, req.token))
        if calls:
            raise_first_error(run_pipelined(self.store.redis, calls))

    def discard_expired(self, req: RefreshRequest) -> None:
        """A refresh that waited past its lease leaves the queue unrun: let the next read enqueue.
        Only the unclaimed task token is released, never a lease that some run holds."""
        self.queue.depart(req.namespace, req.key, req.token, taken=True)
        ns = self.namespaces.get(req.namespace)
        if ns is None:
            return
        metrics.REFRESHES.labels(ns.name, "expired").inc()
        self.store.finish(ns, req.key, req.token)

    def _refresh(self, ns: Namespace, req: RefreshRequest) -> RefreshReport:
        store, key = self.store, req.key
        run_token: str | None = None
        try:
            # The message is off the queue: the key may have another one waiting from now on
            # (DEPART), in the claim's round trip.
            # The run's origin slot is tried in the same round trip (not a batch origin's: its
            # leader takes one slot for the whole call), unless this process's runs fill them.
            slots, limit = self.origin_slots(ns), ns.origin_max_concurrency
            try_slot = ns.batch is None and slots.room_here(limit)
            claimed, departed = store.claim_run(
                ns,
                key,
                req.token,
                before=self.queue.depart_call(ns.name, key, req.token, taken=True),
                then=(lambda run: slots.try_acquire_call(run, limit, store.lease_ttl_ms)) if try_slot else None,
                undo_then=slots.give_back_unclaimed if try_slot else None,
            )
            if isinstance(departed, Exception):
                log.warning("could not take a refresh off the queue's registry (%s)", type(departed).__name__)
            else:
                self._departed[req.token] = None
                if len(self._departed) > DEPARTED_KEPT:
                    self._departed.pop(next(iter(self._departed)))
            if claimed is None:
                # The lease ran out while this task waited, or another run holds it.
                return RefreshReport(RefreshOutcome.LOST_LEASE)
            run_token = claimed.run_token
            return self._run_claimed(ns, req, claimed)
        except OutOfMemoryError:
            # Redis at maxmemory refused the claim or a write before it ran (shared/maxmemory.py).
            store.record_refused_write(ns, key, req.token, run_token)
            return RefreshReport(RefreshOutcome.OUT_OF_MEMORY, FailureCode.OUT_OF_MEMORY, "Redis is at maxmemory")
        except BaseException:
            if run_token is None:
                raise
            # Whatever stopped the run, the key must not stay blocked until its lease runs out.
            try:
                store.end_run(ns, key, run_token)
            except Exception:  # noqa: BLE001 - Redis is down: the lease and marker expire
                pass
            raise

    def _run_claimed(self, ns: Namespace, req: RefreshRequest, claimed: ClaimedRun) -> RefreshReport:
        store, key, run_token = self.store, req.key, claimed.run_token
        slots = self.origin_slots(ns)
        with LeaseRenewer(store, ns, key, run_token, slots) as renewer:
            if ns.batch is not None:  # one slot per batch call, taken by its leader
                return self.batched.call_and_write(ns, req, run_token, renewer)
            got = slots.took(run_token, claimed.then, store.lease_ttl_ms) or slots.acquire(
                run_token,
                ns.origin_max_concurrency,
                store.lease_ttl_ms,
                ns.origin_timeout_seconds * SLOT_WAIT_FACTOR,
            )
            if not got:
                # The origin is saturated by other refreshes: back off like a failure,
                # without counting one against the key or the breaker.
                store.record_failure(ns, key, run_token, origin_called=False, reason=FailureCode.ORIGIN_BUSY)
                return RefreshReport(
                    RefreshOutcome.SLOT_TIMEOUT,
                    FailureCode.ORIGIN_BUSY,
                    f"no concurrency slot of origin {ns.origin_name} came free",
                )
            renewer.holds_slot = True
            try:
                return self._call_and_write(ns, req, claimed, renewer)
            except BaseException:
                if not renewer.holds_slot:
                    # The write, or a step before it (its groups' enlisting: refused at
                    # maxmemory), failed: its round trip may never have given the slot back.
                    with suppress(Exception):  # a no-op if it did; Redis down: the slot expires
                        slots.release(run_token)
                raise
            finally:
                if renewer.holds_slot:  # not yet given back with the write
                    renewer.holds_slot = False
                    slots.release(run_token)

    def _call_and_write(
        self, ns: Namespace, req: RefreshRequest, claimed: ClaimedRun, renewer: LeaseRenewer
    ) -> RefreshReport:
        store, key, run_token = self.store, req.key, claimed.run_token
        if ns.is_proxy:
            return self.proxied.call_and_write(ns, req, run_token, renewer.lost)
        if renewer.lost.is_set():
            return RefreshReport(RefreshOutcome.LOST_LEASE)
        t0 = time.perf_counter()
        deadline = time.monotonic() + ns.origin_timeout_seconds
        try:
            origin = self.origins.get(ns)
        except OriginError as exc:
            # A callable that stopped importing (checked at start, so a module changed or
            # removed since): a failure of the key like any other, without a call to count.
            store.record_failure(ns, key, run_token, reason=exc.code)
            return RefreshReport(RefreshOutcome.ORIGIN_ERROR, exc.code, f"origin {ns.origin_name}: {exc}")
        # With validators stored (read by the claim), the call is conditional and a 304 costs no body.
        stored = claimed.stored if origin.conditional else None

        def fetch() -> OriginResponse | NotModified | None:
            try:
                return origin.fetch(key, deadline, stored.validators if stored else None)
            except NotFound:
                return None  # a 404 is an answer (cached as negative), not a failure

        try:
            # started_ms: the Redis clock when the breaker admitted the call, just before it.
            response, started_ms = self.breaker(ns).call_timed(fetch)
        except BreakerOpen as exc:
            store.record_failure(
                ns,
                key,
                run_token,
                min_cooldown_ms=exc.retry_after_ms,
                origin_called=False,
                reason=FailureCode.BREAKER_OPEN,
            )
            return RefreshReport(
                RefreshOutcome.BREAKER_OPEN, FailureCode.BREAKER_OPEN, f"origin {ns.origin_name}: {exc}"
            )
        except OriginError as exc:
            metrics.ORIGIN_CALLS.labels(ns.name, exc.outcome).inc()
            metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
            store.record_failure(ns, key, run_token, reason=exc.code)
            return RefreshReport(RefreshOutcome.ORIGIN_ERROR, exc.code, f"origin {ns.origin_name}: {exc}")
        metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
        # d (XFetch's refresh duration) counts the queue wait a reader would sit through; a
        # warm-up's queue wait is its own batch ahead of it, which says nothing about the key,
        # and would make the value refresh early by about that much.
        # The origin call is over: its slot goes back in the write's round trip.
        fence = Fence(
            run_token, started_ms, _duration_start(req, started_ms), self.origin_slots(ns).release_call(run_token)
        )
        renewer.holds_slot = False
        if isinstance(response, NotModified):
            # Only a conditional call gets one (an origin that sends 304 unasked fails above).
            metrics.ORIGIN_CALLS.labels(ns.name, "not_modified").inc()
            validated_at, stored_lifetimes = (stored.at_ms, stored.lifetimes) if stored else (0, fixed_lifetimes(ns))
            result = self._write_not_modified(ns, key, fence, validated_at, stored_lifetimes, response)
        elif isinstance(response, OriginResponse):
            metrics.ORIGIN_CALLS.labels(ns.name, "ok").inc()
            metrics.ORIGIN_BYTES.labels(ns.name).inc(len(response.body))
            policy = self.origins.cache_policy(ns, response.cache)
            if policy.storable:
                result = store.fenced_write(
                    ns,
                    key,
                    fence,
                    value=response.body,
                    content_type=response.content_type,
                    validators=response.validators,
                    lifetimes=policy.lifetimes,
                    tags=response.tags,
                )
            else:
                # Handed to the readers waiting now (in the ready message), stored nowhere.
                hand_over = OriginResponse(response.body, response.content_type)
                result = store.drop_uncacheable(ns, key, fence, hand_over=hand_over)
        else:
            metrics.ORIGIN_CALLS.labels(ns.name, "not_found").inc()
            result = store.fenced_write(ns, key, fence, value=b"", content_type="application/json", negative=True)
        # The write published "ready" itself: waiters may read whatever is stored now, and
        # near-caches drop the key, whatever its outcome.
        if not result.written:
            # "fenced": a newer value is stored or the key was purged (or, for a 304, the bytes
            # it confirmed are no longer stored); "lost_lease": a purge or a takeover freed our
            # lease while the origin call ran; "uncacheable": handed over, not stored.
            return RefreshReport(result.status)
        metrics.REFRESH_LAG.labels(ns.name).observe(max(0.0, (result.written_at_ms - req.won_at_ms) / 1000))
        return RefreshReport(result.status)

    def _write_not_modified(
        self,
        ns: Namespace,
        key: str,
        fence: Fence,
        validated_at_ms: int,
        stored_lifetimes: Lifetimes,
        response: NotModified,
    ) -> WriteResult:
        """A 304: the stored bytes start a new lifetime. Its cache headers, when it has any,
        replace the stored ones (RFC 9111 4.3.4); without any, the value keeps its lifetimes."""
        lifetimes = stored_lifetimes
        if ns.freshness is Freshness.ORIGIN and not response.cache.empty:
            policy = self.origins.cache_policy(ns, response.cache)
            if not policy.storable:
                # The origin now forbids storing what it confirmed: drop it. The bytes are in
                # Redis only, so the waiters re-read and the next refresh fetches them whole.
                return self.store.drop_uncacheable(ns, key, fence, hand_over=None)
            lifetimes = policy.lifetimes
        elif ns.freshness is not Freshness.ORIGIN:
            lifetimes = fixed_lifetimes(ns)
        return self.store.revalidate(
            ns, key, fence, validated_at_ms=validated_at_ms, validators=response.validators, lifetimes=lifetimes
        )


def _duration_start(req: RefreshRequest, started_ms: int) -> int:
    """Where a refresh's duration (XFetch's d) starts. For an early, stale or manual refresh,
    when its lease was won: the queue wait the next early refresh will sit through counts. For
    a cold miss or a warm-up, at its origin call: their queue wait is the backlog of a cold
    start, which says nothing about the key. (Counted in, a cold start of 2 000 keys stored
    d of seconds, and one key in thirty was refreshed again as soon as its value landed.)"""
    return started_ms if req.reason in (RefreshReason.MISS, RefreshReason.WARM) else req.won_at_ms
