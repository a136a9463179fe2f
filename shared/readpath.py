"""The read path (web tier): read and decide, win the lease and queue a refresh, wait for a cold key, warm, purge.

What a refresh does with the lease it was handed is told in ``shared/refresher.py``; the routes
are thin adapters over ``ReadPath``.

Read states of a key
--------------------

A key is **absent** (no entry), **fresh** (an entry before its ``soft`` moment), **stale** (past
``soft`` but still stored, for strategies that serve stale values) or **negative** (the origin
said 404; served as 404 until it expires). Orthogonal to that, its lease (``hl:{ns:key}:l``) is
**free**, **won** (a read took it and is handing a refresh to the queue: the lease holds the task
token and the *queued marker* ``:q`` holds it too), or held by a refresh that runs or failed
(**running**, **cooling down**: ``shared/refresher.py``). The queued marker lives exactly as
long as the task's message: set by the read that enqueues, it becomes a running marker while a
worker runs the task and goes when the message is acknowledged or expires unrun.

Reads (web tier, one Redis round trip, ``READ``)
    A read of a fresh value whose XFetch moment ``soft + d·β·ln(u)`` has not come is a HIT.
    Past that moment it is EARLY, past ``soft`` STALE, and with no servable value a MISS. Every
    read that is not a HIT tries to take the free lease; the one that wins hands a refresh task
    to the injected queue (``send_refresh``) and, while that task waits in the queue, the queued
    marker stops every other read from enqueueing another, even after the lease runs out with
    no worker consuming. A running marker stops reads only while its run's lease lives: if the
    run's host dies, the lease runs out and a read takes over. EARLY and STALE reads are
    answered at once with the stored value. A MISS waits (``ColdWaitHub``, bounded by
    ``COLD_WAIT_TIMEOUT_SECONDS``) for the refresh to be published (one re-read per wake-up,
    shared by the key's waiters in the process); if it finds the lease free (its refresher
    died) it takes it over; if the key is cooling down it answers 502 at once. If the queue
    refuses the task the lease and marker are given back, so the next read retries. The winner
    sends only what the queue's bound admits (``shared/queuebound.py``: one waiting message per
    key, MAX_QUEUED_REFRESHES in all; past it a cold read answers 503 ``queue_full`` at once).
    At Redis's maxmemory no lease is stored: a stale value is served, a cold read refused.

Near-cache (web tier)
    A HIT stays a HIT until the value's XFetch moment ``soft + d·β·ln(u)`` (``u`` is stored
    with the value), so the process keeps it in its ``NearCache`` and answers later reads
    from memory until then (a key read less than once per head start until ``soft``: it is not
    worth an early refresh) — never past ``soft``, never while its subscription is down, and
    never after a ready or invalidation message for the key has arrived. While Redis is unreachable it
    answers those it holds STALE, within their stale-if-error bound (``shared/degraded.py``).

Purges (admin)
    A hard purge deletes the entry and the lease and leaves a short tombstone; a soft purge
    makes the value stale now, records the moment (``sp``) and frees a running lease. Because
    writes need the lease, a refresh running during a purge can never land, however long its
    origin call takes; because writes need a start after ``sp``, a soft purge fences every
    refresh that started before it. A refresh still waiting in the queue keeps its marker and
    may re-take the freed lease when it starts (it starts after the purge); the marker of a
    refresh running during the purge no longer holds reads off, since its lease is gone. The
    purge answers once every web process has confirmed dropping the key from its near-cache
    (or ``PURGE_ACK_SECONDS`` passed), so no process serves the purged value from memory after.

Warm-ups (admin)
    A warm-up names many keys of one namespace. Each key holding a fresh value is left alone
    (``already_fresh``); each whose lease is held, cooling down or whose refresh is queued is
    left to that refresh (``in_flight``, ``cooling_down``); every other key has its free lease
    taken and queued marker set exactly as by a read that wins (``WARM``, pipelined), and its
    refresh is handed to the queue with reason ``warm``. So a key warmed while reads of it are
    enqueueing, or warmed twice, costs the origin one call, not two. A warm task may wait in the
    queue as long as its marker lives (a warm-up may enqueue more than the workers run within
    one lease); a read that misses on such a key waits for it like any queued refresh. If the
    queue refuses a task, the leases and markers of the keys not yet handed over are given back.

What never happens: a purged value coming back (from a near-cache included); two refresh
tasks of one key in the queue that could both run (the one exception to "one message": a dead
host's message, restored by the broker's visibility timeout after a read took its key over,
which stops at its claim); a read waiting on the origin while a stale value exists.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress

from redis.exceptions import RedisError

from shared import answers, metrics
from shared.admission import Admission
from shared.answers import OUT_OF_MEMORY, QUEUE_FULL, Answer, Refused, Served, Unstored, refused_by_failure
from shared.coldwait import ColdWaitHub, TooManyWaiters
from shared.degraded import OriginFallback, RedisHealth, answer_from_memory, pending_until_ms, stale_if_error_until_ms
from shared.freshness import CachePolicy
from shared.namespaces import Namespace
from shared.nearcache import NearCache, ReadToken, hit_until_ms
from shared.nearcache import NoNearCache as NoNearCache
from shared.origin import OriginError
from shared.origin_adapters import OriginAdapters
from shared.protocol import (
    AdmitState,
    AnswerOutcome,
    Decision,
    LeaseState,
    ReadyStatus,
    RefreshReason,
    Strategy,
    SuppressReason,
)
from shared.queuebound import EARLY_MAX_WAITING, QueueBound
from shared.settings import Settings
from shared.store import CacheStore, ReadResult, new_token
from shared.tasks import RefreshRequest
from shared.warmup import OpenBatch, SendRefresh, warm_keys

log = logging.getLogger("herdless.engine")


class ReadPath:
    """One per web process: answers reads, manual refreshes, warm-ups and purges. Refreshes go to the
    queue (`send_refresh`, or `open_batch` for a warm-up's many); cold readers wait on the process's
    `waiter`; `near_cache`: NearCache or NoNearCache; `health`: is Redis reachable; `admission`."""

    def __init__(
        self,
        settings: Settings,
        store: CacheStore,
        *,
        send_refresh: SendRefresh,
        open_batch: OpenBatch,
        waiter: ColdWaitHub,
        near_cache: NearCache[ReadResult] | NoNearCache[ReadResult],
        health: RedisHealth,
        admission: Admission,
    ) -> None:
        self.settings = settings
        self.store = store
        self._send_refresh = send_refresh
        self._open_batch = open_batch
        self._waiter = waiter
        self.near_cache = near_cache
        self.health = health
        self.admission = admission
        self.behind: Callable[[], bool] = lambda: False  # past its capacity? (web/front.py: loop lag)
        self.origins = OriginAdapters(settings.origin_max_bytes)
        self.queue = QueueBound(store, settings)
        self._fallback = OriginFallback(self.origins)
        # Keys this process is reading from Redis right now (a cold read's first READ), each with
        # the event its reader sets once the answer is in: others arriving meanwhile wait for it.
        self._first_reads: dict[tuple[str, str], threading.Event] = {}
        self._first_read_wait_s = min(1.0, settings.cold_wait_timeout_seconds)

    def remember(
        self, ns: Namespace, key: str, r: ReadResult, read_token: ReadToken, *, held_back: bool = False
    ) -> None:
        """Redis answered `r` to the read `read_token` began: keep it in the near-cache, served
        from memory while a HIT (a rarely read key's until ``soft``), while a refresh of the key
        is under way (pending_until_ms) or, `held_back`, until ``soft`` (an early refresh this
        read won and gives back), and kept until its stale-if-error bound for an outage. A batch
        read keeps each of its keys' answers so too."""
        near = self.near_cache
        near.redis_answered(read_token)
        if r.soft_ms is None:
            return
        hit = r.decision is Decision.HIT
        until = hit_until_ms(r.soft_ms, r.delta_ms, ns.beta, r.u, r.ttl_ms) if hit else 0.0
        fresh = r.soft_ms if hit else None
        near.put(
            ns.name,
            key,
            r,
            r.now_ms,
            until,
            read_token,
            stale_if_error_until_ms(r, ns),
            fresh_until_ms=fresh,
            pending_until_ms=pending_until_ms(r, ns, held_back=held_back),
        )

    def reading(self, ns_name: str, key: str) -> bool:
        """Is a reader of this process reading the key from Redis now (see `read`)?"""
        return (ns_name, key) in self._first_reads

    # -- reads ----------------------------------------------------------------------------------

    def read(self, ns: Namespace, key: str, *, admitted: bool = False) -> Answer:
        """Answer one read: stored, after a bounded cold wait, or refused (`admitted`: the front holds its slot)."""
        if ns.strategy is Strategy.NAIVE:
            return self._read_naive(ns, key)
        near = self.near_cache
        hit = near.get(ns.name, key)
        if hit is not None:
            # Redis would say HIT until the value's XFetch moment: no round trip needed.
            return answers.near_answer(ns.name, hit)
        if self.health.down:  # known down: answer from memory without waiting on a connect
            return answer_from_memory(near, ns, key, self._fallback)
        try:
            if self._waiter.waiting_on(ns.name, key):
                # Others of this process already wait for the key: join them without a read (see below).
                return self._wait_for_refresh(ns, key, None, None, time.monotonic())
            first = self._first_reads.get((ns.name, key))
            if first is not None:
                # Another reader of this process is reading the key from Redis now: its answer is
                # this one's too (a value lands in the near-cache, a miss opens the wait to join),
                # so wait for it rather than read as well. In a cold herd the readers that came
                # before the first read returned each read, took a slot and, past the bound on
                # reads in flight, were refused: dozens of 1 000 on make run's stack.
                first.wait(self._first_read_wait_s)
                hit = near.get(ns.name, key)
                if hit is not None:
                    return answers.near_answer(ns.name, hit)
                if self._waiter.waiting_on(ns.name, key):
                    return self._wait_for_refresh(ns, key, None, None, time.monotonic())
                # Anything else (a stale or early value, a refusal): this reader reads itself.
            if admitted:
                return self._read_through(ns, key)
            with self.admission.slot() as got:  # past MAX_REQUESTS_IN_FLIGHT: refused at once
                return self._read_through(ns, key) if got else answers.OVERLOADED
        except RedisError as exc:
            if not self.health.failed_with(exc):
                raise
            return answer_from_memory(near, ns, key, self._fallback)

    def _read_through(self, ns: Namespace, key: str) -> Answer:
        near = self.near_cache
        read_token = near.begin_read(ns.name, key)
        token = new_token()
        read_started = time.monotonic()
        target, done = (ns.name, key), threading.Event()
        first = self._first_reads.setdefault(target, done) is done
        try:
            r = self.store.read(ns, key, token)
            # A process past its capacity refreshes nothing early (under overload early refreshes
            # were a sixth more origin calls than an ideal cache's): EARLY until it expires.
            held_back = r.decision is Decision.EARLY and r.won_lease and self.behind()
            self.remember(ns, key, r, read_token, held_back=held_back)
        finally:
            if first:
                # Under gevent the readers waiting for this read run once this one blocks next:
                # after a miss, that is after it registered its wait (below), which they join.
                self._first_reads.pop(target, None)
                done.set()
        if r.decision is Decision.HIT:
            return Served(r, AnswerOutcome.HIT, r.now_ms)
        if r.decision in (Decision.EARLY, Decision.STALE):
            outcome = AnswerOutcome.of(r.decision)
            reason = RefreshReason(outcome.value)
            if held_back:
                with suppress(Exception):  # Redis blinked: the lease expires on its own
                    self.store.finish(ns, key, token)
                metrics.REFRESH_SUPPRESSED.labels(ns.name, SuppressReason.BEHIND).inc()
            elif r.won_lease:
                try:
                    self._enqueue(ns, key, token, reason, r.now_ms)
                except answers.BrokerUnavailable:
                    pass  # the value is served anyway; the next read retries the refresh
            else:
                answers.count_suppressed(ns.name, r)
            return Served(r, outcome, r.now_ms)
        # MISS: nothing servable. Whoever won the lease enqueues; everyone waits for the refresh.
        return self.admission.observed(self._wait_for_refresh(ns, key, r, token, read_started), read_started)

    def _enqueue(self, ns: Namespace, key: str, token: str, reason: str, won_at_ms: int) -> bool:
        """Hand the refresh to the queue; on failure give the lease and marker back. False: the
        key's message still waits in the queue, so none was sent. answers.QueueRefused: the bound is met."""
        request = RefreshRequest(ns.name, key, token, reason, won_at_ms)
        bound = EARLY_MAX_WAITING if reason == "early" else None  # waits for an idle-enough queue
        state = self.queue.admit_or_give_back(ns, key, token, bound=bound, request=request)
        if state is AdmitState.QUEUED:
            return False
        if state is AdmitState.FULL:
            raise answers.QueueRefused(QUEUE_FULL.detail)
        try:
            if not self.queue.sends_with_admission(ns):
                self._send_refresh(request)
        except Exception as exc:  # noqa: BLE001 - kombu raises many types; all mean "not sent"
            log.warning("could not enqueue a refresh for namespace %s: broker unavailable", ns.name)
            with suppress(Exception):  # Redis is down too; the lease expires on its own
                self.store.finish(ns, key, token)
                self.queue.depart(ns.name, key, token)
            raise answers.BrokerUnavailable(str(exc)) from None
        metrics.REFRESH_ENQUEUED.labels(ns.name, reason).inc()
        return True

    def _wait_for_refresh(
        self, ns: Namespace, key: str, first: ReadResult | None, token: str | None, read_started: float
    ) -> Answer:
        """Wait for the key's refresh. `first` is this reader's own read (a MISS), or None for a
        reader that joined waiters already there without reading: it registers and waits for the
        same publish as they do; only if a refresh was published since their oldest read (it
        may have landed before this reader registered) does it read first, sharing that read,
        and a value found then is served as that read's decision (hit, early, stale)."""
        deadline = time.monotonic() + self.settings.cold_wait_timeout_seconds
        try:
            with self._waiter.join(ns.name, key, read_started if first is not None else None) as handle:
                # The winner registers, then enqueues: nothing can be published for the key
                # before its refresh runs, so it waits at once without a second read. Another
                # reader reads again first only if a refresh may have been published between
                # its read and its registration; anything published later wakes it.
                if first is None:
                    # Joined without reading: the others found no value since waiting_since.
                    # Unless a refresh was published since then (it may have landed before this
                    # reader registered), the next publish wakes it like them: no read needed.
                    # It counts as suppressed once it waits (below).
                    fresh_read_due = self._waiter.ready_since(ns.name, key, handle.waiting_since)
                elif first.won_lease and token is not None:
                    fresh_read_due = False
                    try:
                        self._enqueue(ns, key, token, RefreshReason.MISS, first.now_ms)
                    except answers.QueueRefused:
                        return QUEUE_FULL
                    except answers.BrokerUnavailable:
                        return answers.NOT_ENQUEUED
                else:
                    fresh_read_due = self._waiter.ready_since(ns.name, key, read_started)
                    if first.lease_state == LeaseState.OUT_OF_MEMORY:
                        return OUT_OF_MEMORY
                    if first.lease_state == LeaseState.COOLDOWN:
                        metrics.REFRESH_SUPPRESSED.labels(ns.name, SuppressReason.COOLDOWN).inc()
                        return refused_by_failure(first.failure, first.lease_pttl_ms / 1000)
                    reason = SuppressReason.COALESCED if handle.coalesced else SuppressReason.LEASE_HELD
                    metrics.REFRESH_SUPPRESSED.labels(ns.name, reason).inc()

                def reread() -> tuple[ReadResult, Refused | None]:
                    # One read per wake-up for all waiters of the key in this process. If it
                    # finds the lease free (the refresher died, or the last refresh failed and its
                    # cooldown ran out) it takes over and enqueues, once, for all of them.
                    token = new_token()
                    r = self.store.read(ns, key, token)
                    if r.won_lease and r.decision is Decision.MISS and handle.landed_meanwhile(until=deadline):
                        # The refresh waited for ended without storing (an uncacheable answer,
                        # handed over in a publish this process has not taken in yet): taking
                        # over would call the origin again; the next wait() returns the publish.
                        self.store.finish(ns, key, token)
                        return r, None
                    if r.won_lease:
                        try:
                            # A value may have landed meanwhile: then it is served, and its
                            # refresh is an early or stale one, queued behind cold misses.
                            reason = (
                                RefreshReason.MISS
                                if r.decision is Decision.MISS
                                else RefreshReason(r.decision.value.lower())
                            )
                            self._enqueue(ns, key, token, reason, r.now_ms)
                        except answers.QueueRefused:
                            return r, QUEUE_FULL
                        except answers.BrokerUnavailable:
                            return r, answers.NOT_ENQUEUED
                    return r, None

                status: str | None = None
                waited = first is not None  # a joiner served by its first read did not wait
                while True:
                    remaining = deadline - time.monotonic()
                    if fresh_read_due and remaining > 0:
                        # Registered first, read second: a refresh published from here on wakes us.
                        # A sharer waits for the shared read no longer than its own deadline.
                        handle.mark()
                        r, refusal = handle.shared_read(reread, timeout=remaining)  # TimeoutError: below
                        if r.has_value and r.decision is not Decision.MISS:
                            return Served(r, AnswerOutcome.MISS if waited else AnswerOutcome.of(r.decision), r.now_ms)
                        if refusal is not None:
                            return refusal
                        if not r.won_lease and (r.lease_state == LeaseState.COOLDOWN or status == ReadyStatus.ERROR):
                            return refused_by_failure(r.failure, max(r.lease_pttl_ms, 1000) / 1000)
                    fresh_read_due = True
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return answers.cold_wait_timed_out(self.settings.cold_wait_timeout_seconds)
                    if not waited:
                        # A joiner whose read found no value: one more request the refresh
                        # already under way will answer.
                        metrics.REFRESH_SUPPRESSED.labels(ns.name, SuppressReason.COALESCED).inc()
                        waited = True
                    status = handle.wait(remaining)
                    if handle.handed_over is not None:
                        # The origin's answer may not be stored: this is the one copy there is.
                        return Unstored(handle.handed_over.body, handle.handed_over.content_type)
        except TimeoutError:  # the shared read outlasted this waiter's deadline
            return answers.cold_wait_timed_out(self.settings.cold_wait_timeout_seconds)
        except TooManyWaiters:
            if first is not None and first.won_lease and token is not None:
                # Not waiting, but the refresh it won is still worth running for the next reader.
                try:
                    self._enqueue(ns, key, token, RefreshReason.MISS, first.now_ms)
                except answers.BrokerUnavailable:
                    pass
            return answers.TOO_MANY_WAITERS

    def _read_naive(self, ns: Namespace, key: str) -> Answer:
        """Classic cache-aside, the baseline that stampedes: every miss calls the origin from here."""
        r = self.store.read(ns, key, new_token())
        if r.decision is Decision.HIT:
            return Served(r, AnswerOutcome.HIT, r.now_ms)
        started = self.store.now_ms()
        try:
            resp = self.origins.fetch_whole(ns, key)  # never conditional: the whole value every miss
        except OriginError as exc:
            log.warning("origin error for namespace %s (origin %s): %s", ns.name, ns.origin_name, exc)
            # The fixed text of its code: the exception's own may hold a secret (a DSN, a URL).
            return refused_by_failure(exc.code)
        policy: CachePolicy | None = None
        if resp is None:  # a 404: stored as a negative entry
            negative, body, ctype = True, b"", "application/json"
        else:
            negative, body, ctype = False, resp.body, resp.content_type
            policy = self.origins.cache_policy(ns, resp.cache)
        if policy is not None and not policy.storable:
            return Unstored(body, ctype)
        self.store.plain_write(
            ns,
            key,
            started_ms=started,
            value=body,
            content_type=ctype,
            negative=negative,
            soft_ttl_ms=policy.lifetimes.soft_ttl_ms if policy else None,
        )
        r = self.store.read(ns, key, new_token())
        return Served(r, AnswerOutcome.MISS, r.now_ms)

    # -- admin ----------------------------------------------------------------------------------

    def request_refresh(self, ns: Namespace, key: str) -> bool:
        """A manual refresh: True if enqueued, False if one is already queued, running or cooling
        down. Raises answers.BrokerUnavailable when the queue refused it."""
        token = new_token()
        if not self.store.take_lease(ns, key, token):
            metrics.REFRESH_SUPPRESSED.labels(ns.name, SuppressReason.LEASE_HELD).inc()
            return False
        return self._enqueue(ns, key, token, RefreshReason.MANUAL, self.store.now_ms())

    def warm(self, ns: Namespace, keys: list[str]) -> answers.WarmResult:
        """Enqueue a refresh of every key that is neither fresh nor already being refreshed
        (shared/warmup.py)."""
        return warm_keys(self.store, self.queue, self._open_batch, ns, keys)

    def purge(self, ns: Namespace, key: str, *, soft: bool = False) -> bool:
        """Hard purge (the value is gone) or soft purge (served stale and refreshed). Either way
        no refresh that started before the purge can write, and every web process drops the key
        from its near-cache."""
        existed = self.store.soft_purge(ns, key) if soft else self.store.purge(ns, key)
        self.near_cache.invalidate(ns.name, key)  # also when this process's subscription is down
        told, confirmed = self.store.publish_invalidation(ns, key)
        if confirmed < told:
            log.warning(
                "purge in namespace %s: %d of %d web processes confirmed dropping the key in time",
                ns.name,
                confirmed,
                told,
            )
        return existed
