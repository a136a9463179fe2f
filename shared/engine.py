"""The life of one cache key: read and decide, lease, queue hand-off, cold wait, claim, origin
call, write or failure, purge. Routes and the Celery task are thin adapters over this module.

States of a key
---------------

A key is **absent** (no entry), **fresh** (an entry before its ``soft`` moment), **stale** (past
``soft`` but still stored, for strategies that serve stale values) or **negative** (the origin
said 404; served as 404 until it expires). Orthogonal to that, its lease (``hl:{ns:key}:l``) is
**free**, **won** (a read took it and is handing a refresh to the queue: the lease holds the task
token and the *queued marker* ``:q`` holds it too), **running** (a worker claimed it: the lease
holds that run's own token), or **cooling down** (the last refresh failed: ``cd:<token>:<code>``).
The queued marker lives exactly as long as the task's message: set by the read that enqueues,
turned into a *running* marker (``r:<task token>``) when a worker claims the task, cleared when
the worker has acknowledged the message (``finish``) or the message expires unrun.

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
    refuses the task the lease and marker are given back, so the next read retries.

Near-cache (web tier)
    A HIT stays a HIT until the value's XFetch moment ``soft + d·β·ln(u)`` (``u`` is stored
    with the value), so the process keeps it in its ``NearCache`` and answers later reads
    from memory until then — never past it, never while its subscription is down, and never
    after a ready or invalidation message for the key has arrived.

Refreshes (worker, ``run_refresh``)
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

What never happens: two refreshes holding one key's lease; a value older than the stored one
replacing it; a purged value coming back; two refresh tasks of one key in the queue that could
both run (the one exception to "one message": a dead host's message, restored by the broker's
visibility timeout after a read took its key over, which stops at its claim); a read waiting on
the origin while a stale value exists.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

from shared import metrics
from shared.answers import Answer, Refused, Served, refused_by_failure
from shared.breaker import BreakerOpen, OriginBreaker
from shared.coldwait import ColdWaitHub, HandedOver, TooManyWaiters
from shared.freshness import CachePolicy, Lifetimes, fixed_lifetimes
from shared.namespaces import Namespace
from shared.nearcache import NearCache, hit_until_ms
from shared.origin import NotFound, NotModified, OriginError, OriginResponse
from shared.origin_adapters import OriginAdapters
from shared.origin_slots import OriginSlots
from shared.refreshlog import RefreshLog, RefreshReport
from shared.settings import Settings
from shared.store import CacheStore, ReadResult, WriteResult, new_token
from shared.tasks import SLOT_WAIT_FACTOR, RefreshRequest
from shared.xfetch import Decision

log = logging.getLogger("herdless.engine")


# -- what a warm-up answers ---------------------------------------------------------------------


class BrokerUnavailable(Exception):
    """The refresh could not be handed to the queue."""


@dataclass(frozen=True)
class WarmResult:
    """What a warm-up did with each distinct key it was given."""

    enqueued: int
    already_fresh: int
    in_flight: int
    cooling_down: int


class WarmIncomplete(BrokerUnavailable):
    """The queue refused a warm-up's task part-way: `enqueued` were handed over before it did;
    the other keys' leases were given back, so the same warm-up may simply be sent again (the
    keys enqueued the first time then count as in flight)."""

    def __init__(self, enqueued: int) -> None:
        super().__init__(
            f"the queue refused the warm-up after {enqueued} refreshes were enqueued; send it again to enqueue the rest"
        )
        self.enqueued = enqueued


SendRefresh = Callable[[RefreshRequest], None]
# Opens a batch of sends over one broker connection (a warm-up's): `with open_batch() as send:`.
OpenBatch = Callable[[], AbstractContextManager[SendRefresh]]

# Keys a warm-up takes leases for at once: each chunk's tasks are sent right after its leases
# are taken, so no key holds a lease and queued marker long without a task behind them.
WARM_CHUNK = 500


# -- the web side -------------------------------------------------------------------------------


class Engine:
    """One per process. The web tier gives it a queue (`send_refresh`) and a cold-miss waiter;
    the worker tier uses `run_refresh`."""

    def __init__(
        self,
        settings: Settings,
        namespaces: dict[str, Namespace],
        store: CacheStore,
        *,
        send_refresh: SendRefresh | None = None,
        open_batch: OpenBatch | None = None,
        waiter: ColdWaitHub | None = None,
        near_cache: NearCache[ReadResult] | None = None,
        slots: Callable[[str], OriginSlots] | None = None,
        breaker_client: Any | None = None,
    ) -> None:
        self.settings = settings
        self.namespaces = namespaces
        self.store = store
        self._send_refresh = send_refresh
        self._open_batch = open_batch
        self._waiter = waiter
        self.near_cache = near_cache
        self._slots_factory = slots
        self._breaker_client = breaker_client if breaker_client is not None else store.redis
        self.origins = OriginAdapters(settings.origin_max_bytes)
        self._breakers: dict[str, OriginBreaker] = {}
        self._slots: dict[str, OriginSlots] = {}
        self._lock = threading.Lock()
        self.refresh_log = RefreshLog()

    # breakers and slots are built once per origin, on first use
    def breaker(self, ns: Namespace) -> OriginBreaker:
        breaker = self._breakers.get(ns.origin_name)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(ns.origin_name)
                if breaker is None:
                    breaker = OriginBreaker(self._breaker_client, ns.origin_name, self.settings)
                    self._breakers[ns.origin_name] = breaker
        return breaker

    def origin_slots(self, ns: Namespace) -> OriginSlots | None:
        if self._slots_factory is None:
            return None
        slots = self._slots.get(ns.origin_name)
        if slots is None:
            with self._lock:
                slots = self._slots.get(ns.origin_name)
                if slots is None:
                    slots = self._slots[ns.origin_name] = self._slots_factory(ns.origin_name)
        return slots

    # -- reads ----------------------------------------------------------------------------------

    def read(self, ns: Namespace, key: str) -> Answer:
        """Answer one read of (ns, key): from the store, after a bounded cold wait, or refused."""
        if ns.strategy == "naive":
            return self._read_naive(ns, key)
        near = self.near_cache
        read_token = None
        if near is not None:
            hit = near.get(ns.name, key)
            if hit is not None:
                # Redis would say HIT until the value's XFetch moment: no round trip needed.
                return Served(hit.entry, "hit", hit.redis_now_ms, from_near_cache=True)
        if self._waiter is not None and self._waiter.waiting_on(ns.name, key):
            # Readers of this process already wait for the key's refresh: join them without a
            # read of its own (see _wait_for_refresh). Readers that keep arriving during a slow
            # cold refresh then cost a process a handful of reads, not one each.
            return self._wait_for_refresh(ns, key, None, None, time.monotonic())
        if near is not None:
            read_token = near.begin_read(ns.name, key)
        token = new_token()
        read_started = time.monotonic()
        r = self.store.read(ns, key, token)
        if r.decision is Decision.HIT:
            if near is not None and read_token is not None and r.soft_ms is not None:
                until = hit_until_ms(r.soft_ms, r.delta_ms, ns.beta, r.u)
                near.put(ns.name, key, r, r.now_ms, until, read_token)
            return Served(r, "hit", r.now_ms)
        if r.decision in (Decision.EARLY, Decision.STALE):
            reason = r.decision.value.lower()
            if r.won_lease:
                try:
                    self._enqueue(ns, key, token, reason, r.now_ms)
                except BrokerUnavailable:
                    pass  # the value is served anyway; the next read retries the refresh
            else:
                self._count_suppressed(ns, r)
            return Served(r, reason, r.now_ms)
        # MISS: nothing servable. Whoever won the lease enqueues; everyone waits for the refresh.
        return self._wait_for_refresh(ns, key, r, token, read_started)

    def _count_suppressed(self, ns: Namespace, r: ReadResult) -> None:
        reason = "cooldown" if r.lease_state == "cooldown" else "lease_held"
        metrics.REFRESH_SUPPRESSED.labels(ns.name, reason).inc()

    def _enqueue(self, ns: Namespace, key: str, token: str, reason: str, won_at_ms: int) -> None:
        """Hand the refresh to the queue; on failure give the lease and marker back."""
        if self._send_refresh is None:
            raise BrokerUnavailable("this engine has no refresh queue")
        try:
            self._send_refresh(RefreshRequest(ns.name, key, token, reason, won_at_ms))
        except Exception as exc:  # noqa: BLE001 - kombu raises many types; all mean "not sent"
            log.warning("could not enqueue a refresh for namespace %s: broker unavailable", ns.name)
            try:
                self.store.finish(ns, key, token)
            except Exception:  # noqa: BLE001 - Redis is down too; the lease expires on its own
                pass
            raise BrokerUnavailable(str(exc)) from None
        metrics.REFRESH_ENQUEUED.labels(ns.name, reason).inc()

    def _wait_for_refresh(
        self, ns: Namespace, key: str, first: ReadResult | None, token: str | None, read_started: float
    ) -> Answer:
        """Wait for the key's refresh. `first` is this reader's own read (a MISS), or None for a
        reader that joined waiters already there without reading: it registers and waits for the
        same publish as they do; only if a refresh was published since their oldest read (it
        may have landed before this reader registered) does it read first, sharing that read,
        and a value found then is served as that read's decision (hit, early, stale)."""
        if self._waiter is None:
            if first is not None and first.won_lease and token is not None:
                self.store.finish(ns, key, token)
            return Refused(503, "cold_wait_timeout", "this process cannot wait for refreshes", 1)
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
                        self._enqueue(ns, key, token, "miss", first.now_ms)
                    except BrokerUnavailable:
                        return Refused(503, "broker_unavailable", "could not enqueue the refresh", 1)
                else:
                    fresh_read_due = self._waiter.ready_since(ns.name, key, read_started)
                    if first.lease_state == "cooldown":
                        metrics.REFRESH_SUPPRESSED.labels(ns.name, "cooldown").inc()
                        return refused_by_failure(first.failure, first.lease_pttl_ms / 1000)
                    reason = "coalesced" if handle.coalesced else "lease_held"
                    metrics.REFRESH_SUPPRESSED.labels(ns.name, reason).inc()

                def reread() -> tuple[ReadResult, bool]:
                    # One read per wake-up for all waiters of the key in this process. If it
                    # finds the lease free (the refresher died, or the last refresh failed and its
                    # cooldown ran out) it takes over and enqueues, once, for all of them.
                    token = new_token()
                    r = self.store.read(ns, key, token)
                    if r.won_lease:
                        try:
                            # A value may have landed meanwhile: then it is served, and its
                            # refresh is an early or stale one, queued behind cold misses.
                            reason = "miss" if r.decision is Decision.MISS else r.decision.value.lower()
                            self._enqueue(ns, key, token, reason, r.now_ms)
                        except BrokerUnavailable:
                            return r, False
                    return r, True

                status: str | None = None
                now_ms = first.now_ms if first is not None else 0
                waited = first is not None  # a joiner served by its first read did not wait
                while True:
                    if fresh_read_due:
                        # Registered first, read second: a refresh published from here on wakes us.
                        handle.mark()
                        r, enqueued = handle.shared_read(reread, timeout=self.settings.cold_wait_timeout_seconds)
                        now_ms = r.now_ms
                        if r.has_value and r.decision is not Decision.MISS:
                            return Served(r, "miss" if waited else r.decision.value.lower(), r.now_ms)
                        if not enqueued:
                            return Refused(503, "broker_unavailable", "could not enqueue the refresh", 1)
                        if not r.won_lease and (r.lease_state == "cooldown" or status == "error"):
                            return refused_by_failure(r.failure, max(r.lease_pttl_ms, 1000) / 1000)
                    fresh_read_due = True
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return Refused(
                            503,
                            "cold_wait_timeout",
                            "the value is being computed; retry shortly",
                            self.settings.cold_wait_timeout_seconds,
                        )
                    if not waited:
                        # A joiner whose read found no value: one more request the refresh
                        # already under way will answer.
                        metrics.REFRESH_SUPPRESSED.labels(ns.name, "coalesced").inc()
                        waited = True
                    status = handle.wait(remaining)
                    if handle.handed_over is not None:
                        # The origin's answer may not be stored: this is the one copy there is.
                        # (A joiner that never read has no Redis time: the answer has no stored
                        # life either way, so the host clock dates it.)
                        now_ms = now_ms or int(time.time() * 1000)
                        return Served(
                            _handed_over_result(handle.handed_over, now_ms),
                            "miss",
                            now_ms,
                            uncacheable=True,
                        )
        except TooManyWaiters:
            if first is not None and first.won_lease and token is not None:
                # Not waiting, but the refresh it won is still worth running for the next reader.
                try:
                    self._enqueue(ns, key, token, "miss", first.now_ms)
                except BrokerUnavailable:
                    pass
            return Refused(503, "too_many_waiters", "too many requests are waiting for cold keys", 1)

    def _read_naive(self, ns: Namespace, key: str) -> Answer:
        """Classic cache-aside, the baseline that stampedes: every miss calls the origin from here."""
        r = self.store.read(ns, key, new_token())
        if r.decision is Decision.HIT:
            return Served(r, "hit", r.now_ms)
        started = self.store.now_ms()
        t0 = time.perf_counter()
        policy: CachePolicy | None = None
        try:
            # Never conditional: the baseline fetches the whole value on every miss.
            resp = self.origins.get(ns).fetch(key, deadline=time.monotonic() + ns.origin_timeout_seconds)
            if isinstance(resp, NotModified):
                raise OriginError("origin answered 304 to a request that was not conditional")
            negative, body, ctype = False, resp.body, resp.content_type
            metrics.ORIGIN_CALLS.labels(ns.name, "ok").inc()
            metrics.ORIGIN_BYTES.labels(ns.name).inc(len(body))
            policy = self.origins.cache_policy(ns, resp.cache)
        except NotFound:
            negative, body, ctype = True, b"", "application/json"
            metrics.ORIGIN_CALLS.labels(ns.name, "not_found").inc()
        except OriginError as exc:
            metrics.ORIGIN_CALLS.labels(ns.name, exc.outcome).inc()
            log.warning("origin error for namespace %s (origin %s): %s", ns.name, ns.origin_name, exc)
            return Refused(502, exc.code, str(exc))
        finally:
            metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
        if policy is not None and not policy.storable:
            return Served(_handed_over_result(HandedOver(body, ctype), started), "miss", started, uncacheable=True)
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
        return Served(r, "miss", r.now_ms)

    # -- admin ----------------------------------------------------------------------------------

    def request_refresh(self, ns: Namespace, key: str) -> bool:
        """A manual refresh: True if enqueued, False if one is already queued, running or cooling
        down. Raises BrokerUnavailable when the queue refused it."""
        token = new_token()
        if not self.store.take_lease(ns, key, token):
            metrics.REFRESH_SUPPRESSED.labels(ns.name, "lease_held").inc()
            return False
        self._enqueue(ns, key, token, "manual", self.store.now_ms())
        return True

    def warm(self, ns: Namespace, keys: list[str]) -> WarmResult:
        """Enqueue a refresh of every key that is neither fresh nor already being refreshed (keys
        validated by the caller; duplicates count once). Raises WarmIncomplete when the queue
        refuses a task."""
        if self._send_refresh is None:
            raise WarmIncomplete(0)
        distinct = list(dict.fromkeys(keys))
        states: dict[str, str] = {}
        sent = 0
        batch = self._open_batch() if self._open_batch is not None else nullcontext(self._send_refresh)
        with ExitStack() as on_exit:
            try:
                send = on_exit.enter_context(batch)
            except Exception as exc:  # noqa: BLE001 - kombu raises many types; all mean "no broker"
                log.warning("warm-up of %s: broker unavailable (%s)", ns.name, type(exc).__name__)
                raise WarmIncomplete(0) from exc
            try:
                for start in range(0, len(distinct), WARM_CHUNK):
                    tokens = {key: new_token() for key in distinct[start : start + WARM_CHUNK]}
                    chunk, won_at_ms = self.store.warm(ns, tokens)
                    won = [key for key, state in chunk.items() if state == "won"]
                    for i, key in enumerate(won):
                        try:
                            send(RefreshRequest(ns.name, key, tokens[key], "warm", won_at_ms))
                        except Exception as exc:  # noqa: BLE001 - kombu raises many types; all mean "not sent"
                            log.warning(
                                "warm-up of %s: broker unavailable after %d refreshes (%s)",
                                ns.name,
                                sent,
                                type(exc).__name__,
                            )
                            # Keys of later chunks were never touched; give back this chunk's unsent.
                            self._give_back(ns, {k: tokens[k] for k in won[i:]})
                            raise WarmIncomplete(sent) from exc
                        sent += 1
                    states.update(chunk)
            finally:
                metrics.REFRESH_ENQUEUED.labels(ns.name, "warm").inc(sent)
        counts = Counter(states.values())
        return WarmResult(
            enqueued=sent,
            already_fresh=counts["fresh"],
            in_flight=counts["queued"] + counts["held"],
            cooling_down=counts["cooldown"],
        )

    def _give_back(self, ns: Namespace, tokens: dict[str, str]) -> None:
        try:
            self.store.finish_many(ns, tokens)
        except Exception:  # noqa: BLE001 - Redis is down too; the leases and markers expire
            log.warning("warm-up for namespace %s: could not give back %d leases", ns.name, len(tokens))

    def purge(self, ns: Namespace, key: str, *, soft: bool = False) -> bool:
        """Hard purge (the value is gone) or soft purge (served stale and refreshed). Either way
        no refresh that started before the purge can write, and every web process drops the key
        from its near-cache."""
        existed = self.store.soft_purge(ns, key) if soft else self.store.purge(ns, key)
        told, confirmed = self.store.publish_invalidation(ns, key)
        if confirmed < told:
            log.warning(
                "purge in namespace %s: %d of %d web processes confirmed dropping the key in time",
                ns.name,
                confirmed,
                told,
            )
        return existed

    # -- the worker side --------------------------------------------------------------------------

    def run_refresh(self, req: RefreshRequest) -> str:
        """Run one refresh task; returns the outcome recorded in herdless_refresh_total."""
        return self.run_refresh_reported(req).outcome

    def run_refresh_reported(self, req: RefreshRequest) -> RefreshReport:
        """Run one refresh task; returns its outcome and, for a failure, why (for the task's
        state in Flower). Logs a failure at once and the rest in the periodic summary."""
        ns = self.namespaces.get(req.namespace)
        if ns is None:
            log.warning("refresh for unknown namespace %r dropped", req.namespace)
            return RefreshReport("lost_lease")
        report = self._refresh(ns, req)
        metrics.REFRESHES.labels(ns.name, report.outcome).inc()
        self.refresh_log.record(ns.name, req.key, report)
        return report

    def requeued(self, req: RefreshRequest) -> None:
        """This task's message goes back to the queue (its worker is stopping while it runs):
        its marker becomes a waiting one, so no read enqueues a second refresh meanwhile. If the
        run still finishes, its acknowledgement clears the marker (`finished`)."""
        ns = self.namespaces.get(req.namespace)
        if ns is not None:
            self.store.mark_queued(ns, req.key, req.token)

    def finished(self, req: RefreshRequest) -> None:
        """This task's message is acknowledged (or dropped): it will never run again, so the
        next read may enqueue another refresh of the key."""
        ns = self.namespaces.get(req.namespace)
        if ns is not None:
            self.store.finish(ns, req.key, req.token)

    def discard_expired(self, req: RefreshRequest) -> None:
        """A refresh that waited past its lease leaves the queue unrun: let the next read enqueue.
        Only the unclaimed task token is released, never a lease that some run holds."""
        ns = self.namespaces.get(req.namespace)
        if ns is None:
            return
        metrics.REFRESHES.labels(ns.name, "expired").inc()
        self.store.finish(ns, req.key, req.token)

    def _refresh(self, ns: Namespace, req: RefreshRequest) -> RefreshReport:
        store, key = self.store, req.key
        run_token = store.claim(ns, key, req.token)
        if run_token is None:
            # The lease ran out while this task waited, or another run holds it.
            return RefreshReport("lost_lease")
        try:
            return self._run_claimed(ns, req, run_token)
        except BaseException:
            # Whatever stopped the run, the key must not stay blocked until its lease runs out.
            try:
                store.end_run(ns, key, run_token)
            except Exception:  # noqa: BLE001 - Redis is down: the lease and marker expire
                pass
            raise

    def _run_claimed(self, ns: Namespace, req: RefreshRequest, run_token: str) -> RefreshReport:
        store, key = self.store, req.key
        slots = self.origin_slots(ns)
        with LeaseRenewer(store, ns, key, run_token, slots) as renewer:
            if slots is not None:
                got = slots.acquire(
                    run_token,
                    ns.origin_max_concurrency,
                    store.lease_ttl_ms,
                    ns.origin_timeout_seconds * SLOT_WAIT_FACTOR,
                )
                if not got:
                    # The origin is saturated by other refreshes: back off like a failure,
                    # without counting one against the key or the breaker.
                    store.record_failure(ns, key, run_token, origin_called=False, reason="origin_busy")
                    store.publish_ready(ns, key, "error")
                    return RefreshReport(
                        "slot_timeout", "origin_busy", f"no concurrency slot of origin {ns.origin_name} came free"
                    )
                renewer.holds_slot = True
            try:
                return self._call_and_write(ns, req, run_token, renewer)
            finally:
                if slots is not None:
                    renewer.holds_slot = False
                    slots.release(run_token)

    def _call_and_write(
        self, ns: Namespace, req: RefreshRequest, run_token: str, renewer: LeaseRenewer
    ) -> RefreshReport:
        store, key = self.store, req.key
        if renewer.lost.is_set():
            return RefreshReport("lost_lease")
        t0 = time.perf_counter()
        deadline = time.monotonic() + ns.origin_timeout_seconds
        try:
            origin = self.origins.get(ns)
        except OriginError as exc:
            # A callable that stopped importing (checked at start, so a module changed or
            # removed since): a failure of the key like any other, without a call to count.
            store.record_failure(ns, key, run_token, reason=exc.code)
            store.publish_ready(ns, key, "error")
            return RefreshReport("origin_error", exc.code, f"origin {ns.origin_name}: {exc}")
        # With validators stored, the call is conditional and a 304 costs no body.
        stored = store.stored_validators(ns, key) if origin.conditional else None

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
                ns, key, run_token, min_cooldown_ms=exc.retry_after_ms, origin_called=False, reason="breaker_open"
            )
            store.publish_ready(ns, key, "error")
            return RefreshReport("breaker_open", "breaker_open", f"origin {ns.origin_name}: {exc}")
        except OriginError as exc:
            metrics.ORIGIN_CALLS.labels(ns.name, exc.outcome).inc()
            metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
            store.record_failure(ns, key, run_token, reason=exc.code)
            store.publish_ready(ns, key, "error")
            return RefreshReport("origin_error", exc.code, f"origin {ns.origin_name}: {exc}")
        metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
        # d (XFetch's refresh duration) counts the queue wait a reader would sit through; a
        # warm-up's queue wait is its own batch ahead of it, which says nothing about the key,
        # and would make the value refresh early by about that much.
        won_at_ms = _duration_start(req, started_ms)
        if isinstance(response, NotModified):
            # Only a conditional call gets one (an origin that sends 304 unasked fails above).
            metrics.ORIGIN_CALLS.labels(ns.name, "not_modified").inc()
            validated_at, stored_lifetimes = (stored.at_ms, stored.lifetimes) if stored else (0, fixed_lifetimes(ns))
            result = self._write_not_modified(
                ns, req.key, run_token, started_ms, won_at_ms, validated_at, stored_lifetimes, response
            )
        elif isinstance(response, OriginResponse):
            metrics.ORIGIN_CALLS.labels(ns.name, "ok").inc()
            metrics.ORIGIN_BYTES.labels(ns.name).inc(len(response.body))
            policy = self.origins.cache_policy(ns, response.cache)
            if policy.storable:
                result = store.fenced_write(
                    ns,
                    key,
                    run_token,
                    started_ms=started_ms,
                    won_at_ms=won_at_ms,
                    value=response.body,
                    content_type=response.content_type,
                    validators=response.validators,
                    lifetimes=policy.lifetimes,
                )
            else:
                # Handed to the readers waiting now (in the ready message), stored nowhere.
                hand_over = OriginResponse(response.body, response.content_type)
                result = store.drop_uncacheable(
                    ns, key, run_token, started_ms=started_ms, won_at_ms=won_at_ms, hand_over=hand_over
                )
        else:
            metrics.ORIGIN_CALLS.labels(ns.name, "not_found").inc()
            result = store.fenced_write(
                ns,
                key,
                run_token,
                started_ms=started_ms,
                won_at_ms=won_at_ms,
                value=b"",
                content_type="application/json",
                negative=True,
            )
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
        run_token: str,
        started_ms: int,
        won_at_ms: int,
        validated_at_ms: int,
        stored_lifetimes: Lifetimes,
        response: NotModified,
    ) -> WriteResult:
        """A 304: the stored bytes start a new lifetime. Its cache headers, when it has any,
        replace the stored ones (RFC 9111 4.3.4); without any, the value keeps its lifetimes."""
        lifetimes = stored_lifetimes
        if ns.freshness == "origin" and not response.cache.empty:
            policy = self.origins.cache_policy(ns, response.cache)
            if not policy.storable:
                # The origin now forbids storing what it confirmed: drop it. The bytes are in
                # Redis only, so the waiters re-read and the next refresh fetches them whole.
                return self.store.drop_uncacheable(
                    ns, key, run_token, started_ms=started_ms, won_at_ms=won_at_ms, hand_over=None
                )
            lifetimes = policy.lifetimes
        elif ns.freshness != "origin":
            lifetimes = fixed_lifetimes(ns)
        return self.store.revalidate(
            ns,
            key,
            run_token,
            started_ms=started_ms,
            won_at_ms=won_at_ms,
            validated_at_ms=validated_at_ms,
            validators=response.validators,
            lifetimes=lifetimes,
        )


class LeaseRenewer:
    """Extends the run's lease (and its origin slot) at a third of the lease TTL while the
    refresh runs. A thread, or a greenlet under gevent's monkey patching. `lost` is set when the
    lease is no longer this run's (a purge, or a pause past the lease)."""

    def __init__(self, store: CacheStore, ns: Namespace, key: str, run_token: str, slots: OriginSlots | None) -> None:
        self._store, self._ns, self._key, self._token, self._slots = store, ns, key, run_token, slots
        self._stop = threading.Event()
        self.lost = threading.Event()
        self.holds_slot = False
        self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)

    def _run(self) -> None:
        interval = self._store.settings.lease_ttl_seconds / 3
        while not self._stop.wait(interval):
            try:
                if self.holds_slot and self._slots is not None:
                    self._slots.renew(self._token, self._store.lease_ttl_ms)
                if not self._store.renew_lease(self._ns, self._key, self._token):
                    self.lost.set()
                    return
            except Exception:  # noqa: BLE001 - Redis blinked; the next tick tries again
                log.warning("lease renewal failed for namespace %s", self._ns.name)

    def __enter__(self) -> LeaseRenewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


def cache_headers(ns: Namespace, r: ReadResult, outcome: str, now_ms: int | None = None) -> dict[str, str]:
    """X-Cache, Age, Cache-Control and ETag of an answer from a stored entry."""
    now = r.now_ms if now_ms is None else now_ms
    headers = {"X-Cache": outcome.upper()}
    if r.at_ms is not None:
        headers["Age"] = str(max(0, (now - r.at_ms) // 1000))
    if r.soft_ms is not None:
        max_age = max(0, math.floor((r.soft_ms - now) / 1000))
        stale_ms = ns.stale_ttl_ms if r.stale_ms is None else r.stale_ms
        headers["Cache-Control"] = f"max-age={max_age}, stale-while-revalidate={stale_ms // 1000}"
    if r.etag:
        headers["ETag"] = r.etag
    return headers


def _duration_start(req: RefreshRequest, started_ms: int) -> int:
    """Where a refresh's duration (XFetch's d) starts. For an early, stale or manual refresh,
    when its lease was won: the queue wait the next early refresh will sit through counts. For
    a cold miss or a warm-up, at its origin call: their queue wait is the backlog of a cold
    start, which says nothing about the key. (Counted in, a cold start of 2 000 keys stored
    d of seconds, and one key in thirty was refreshed again as soon as its value landed.)"""
    return started_ms if req.reason in ("miss", "warm") else req.won_at_ms


def _handed_over_result(handed: HandedOver, now_ms: int) -> ReadResult:
    """An uncacheable answer in the shape of a read: a value with no stored life."""
    return ReadResult(
        decision=Decision.MISS,
        won_lease=False,
        now_ms=now_ms,
        value=handed.body,
        content_type=handed.content_type,
        etag="",
        at_ms=None,
        soft_ms=None,
        delta_ms=0.0,
        negative=False,
        lease_state="",
        lease_pttl_ms=0,
        u=1.0,
    )
