"""Batch reads (web tier): many keys of one namespace answered together, at the cost of one read.

A batch read answers each key exactly as a read of it alone would (``shared/readpath.py``), at
the cost of one:

- keys the process's near-cache holds as HITs are answered from memory, with no Redis round trip;
- the other keys are read in one pipelined round trip per Redis node (``CacheStore.read_many``),
  each by the same READ script a single read runs, so each takes its lease under the same rules;
- every key whose read won its lease is handed to the queue once, under the queue's bound, as a
  single read's refresh would be (a miss, an early or a stale one);
- the request then waits for its cold keys together: it registers as a waiter of each (the
  process's one subscription wakes it), waits until each has been published or the hub's
  re-read slice ends, and re-reads the keys still missing in one pipelined round trip, until
  ``COLD_WAIT_TIMEOUT_SECONDS`` have passed; a key that has not arrived by then is answered with
  its own 503 (or 502 for a key whose refresh failed), never by failing the batch.

A batch takes one slot of the process's admission bound (it is one request), and each of its
waiting keys one cold waiter (MAX_COLD_WAITERS: past it, that key answers 503
``too_many_waiters``, its refresh still enqueued). Duplicate keys are read and answered once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack

from redis.exceptions import RedisError

from shared import answers, metrics
from shared.answers import OUT_OF_MEMORY, QUEUE_FULL, Answer, Refused, Served, Unstored, refused_by_failure
from shared.coldwait import TooManyWaiters, WaitHandle
from shared.degraded import answer_from_memory
from shared.namespaces import Namespace
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
from shared.queuebound import EARLY_MAX_WAITING
from shared.readpath import ReadPath
from shared.store import ReadResult, new_token
from shared.tasks import RefreshRequest

# Sends several refreshes of one namespace and reason as one message (shared/tasks.py send_refreshes).
SendMany = Callable[[list[RefreshRequest]], None]

log = logging.getLogger("herdless.engine")


def read_batch(
    path: ReadPath, ns: Namespace, keys: Iterable[str], send_many: SendMany | None = None
) -> dict[str, Answer]:
    """Answer every key (validated by the caller) of `ns`; each distinct key once, in order.
    `send_many` puts several refreshes of a batch-origin namespace on the queue as one message."""
    distinct = list(dict.fromkeys(keys))
    if ns.strategy is Strategy.NAIVE:
        # The baseline that stampedes calls the origin per key from here: nothing to batch.
        return {key: path.read(ns, key) for key in distinct}
    out: dict[str, Answer] = {}
    rest: list[str] = []
    for key in distinct:
        hit = path.near_cache.get(ns.name, key)
        if hit is not None:
            out[key] = answers.near_answer(ns.name, hit)
        else:
            rest.append(key)
    if not rest:
        return out
    if not path.health.down:
        try:
            with path.admission.slot() as admitted:
                if not admitted:
                    return {key: out.get(key, answers.OVERLOADED) for key in distinct}
                _BatchRead(path, ns, out, send_many).run(rest)
                return {key: out[key] for key in distinct}
        except RedisError as exc:
            if not path.health.failed_with(exc):
                raise
    for key in rest:  # Redis is unreachable: what this process holds, as a single read would
        if key not in out:
            out[key] = answer_from_memory(path.near_cache, ns, key, path._fallback)
    return {key: out[key] for key in distinct}


class _BatchRead:
    """One batch read's keys that were not near-cache HITs; answers go into `out`."""

    def __init__(self, path: ReadPath, ns: Namespace, out: dict[str, Answer], send_many: SendMany | None) -> None:
        self.path, self.ns, self.out = path, ns, out
        # A batch origin's keys travel many to a message: the worker runs them as one call.
        self.send_many = send_many if ns.batch is not None else None

    def run(self, keys: list[str]) -> None:
        started = time.monotonic()
        reads = self._read(keys)
        misses: dict[str, ReadResult] = {}
        wins: dict[str, tuple[str, RefreshReason, int]] = {}
        for key, (r, token) in reads.items():
            if r.decision is Decision.HIT:
                self.out[key] = Served(r, AnswerOutcome.HIT, r.now_ms)
            elif r.decision in (Decision.EARLY, Decision.STALE):
                outcome = AnswerOutcome.of(r.decision)
                self.out[key] = Served(r, outcome, r.now_ms)
                if r.won_lease:
                    wins[key] = (token, RefreshReason(outcome.value), r.now_ms)
                else:
                    answers.count_suppressed(self.ns.name, r)
            else:
                misses[key] = r
                if r.won_lease:
                    wins[key] = (token, RefreshReason.MISS, r.now_ms)
        if not misses:
            self._enqueue(wins)  # served anyway: a refused refresh is retried by the next read
            return
        try:
            self._wait(misses, wins, started)
        finally:
            self.path.admission.observe_wait(time.monotonic() - started)

    def _read(self, keys: list[str]) -> dict[str, tuple[ReadResult, str]]:
        """READ `keys` in one round trip per node, keeping what Redis called fresh in the near-cache."""
        near, ns = self.path.near_cache, self.ns
        tokens = {key: new_token() for key in keys}
        read_tokens = {key: near.begin_read(ns.name, key) for key in keys}
        results = self.path.store.read_many(ns, tokens)
        for key, r in results.items():
            self.path.remember(ns, key, r, read_tokens[key])
        return {key: (r, tokens[key]) for key, r in results.items()}

    def _enqueue(self, wins: dict[str, tuple[str, RefreshReason, int]]) -> dict[str, Refused]:
        """Hand each won refresh to the queue as a single read would; the refusals, by key."""
        if self.send_many is not None and wins:
            return self._enqueue_many(wins, self.send_many)
        refused: dict[str, Refused] = {}
        for key, (token, reason, won_at_ms) in wins.items():
            try:
                self.path._enqueue(self.ns, key, token, reason, won_at_ms)
            except answers.QueueRefused:
                refused[key] = QUEUE_FULL
            except answers.BrokerUnavailable:
                refused[key] = answers.NOT_ENQUEUED
        return refused

    def _enqueue_many(self, wins: dict[str, tuple[str, RefreshReason, int]], send_many: SendMany) -> dict[str, Refused]:
        """Admit each won refresh under the queue's bound as `_enqueue` does, then send the
        admitted ones batch_max_keys (and one reason) to a message."""
        path, ns = self.path, self.ns
        assert ns.batch is not None
        refused: dict[str, Refused] = {}
        groups: dict[RefreshReason, list[RefreshRequest]] = {}
        for key, (token, reason, won_at_ms) in wins.items():
            # An early refresh waits for an idle-enough queue, as a single read's (ReadPath._enqueue).
            bound = EARLY_MAX_WAITING if reason == RefreshReason.EARLY else None
            state = path.queue.admit_or_give_back(ns, key, token, bound=bound)
            if state is AdmitState.FULL:
                refused[key] = QUEUE_FULL
            elif state is AdmitState.ADMITTED:
                groups.setdefault(reason, []).append(RefreshRequest(ns.name, key, token, reason, won_at_ms))
        for reason, requests in groups.items():
            for start in range(0, len(requests), ns.batch.max_keys):
                chunk = requests[start : start + ns.batch.max_keys]
                try:
                    send_many(chunk)
                except Exception:  # noqa: BLE001 - kombu raises many types; all mean "not sent"
                    log.warning(
                        "could not enqueue %d refreshes for namespace %s: broker unavailable", len(chunk), ns.name
                    )
                    for r in chunk:
                        refused[r.key] = answers.NOT_ENQUEUED
                        try:
                            path.store.finish(ns, r.key, r.token)
                            path.queue.depart(ns.name, r.key, r.token)
                        except Exception:  # noqa: BLE001 - Redis is down too; they expire
                            pass
                    continue
                metrics.REFRESH_ENQUEUED.labels(ns.name, reason).inc(len(chunk))
        return refused

    def _wait(
        self, misses: dict[str, ReadResult], wins: dict[str, tuple[str, RefreshReason, int]], started: float
    ) -> None:
        path, ns, out = self.path, self.ns, self.out
        hub = path._waiter
        deadline = time.monotonic() + path.settings.cold_wait_timeout_seconds
        handles: dict[str, WaitHandle] = {}
        with ExitStack() as joined:
            # Registered first, enqueued second (as a single read): nothing can be published for
            # a key before its refresh runs, so none is missed.
            for key in misses:
                try:
                    # One request, one waiter against MAX_COLD_WAITERS, however many keys.
                    handles[key] = joined.enter_context(hub.join(ns.name, key, started, counted=not handles))
                except TooManyWaiters:
                    out[key] = answers.TOO_MANY_WAITERS
            for key, refusal in self._enqueue(wins).items():
                if key in misses:
                    out.setdefault(key, refusal)
            due: set[str] = set()
            for key, r in misses.items():
                if key in out or key in wins:
                    continue
                if r.lease_state == LeaseState.OUT_OF_MEMORY:
                    out[key] = OUT_OF_MEMORY
                elif r.lease_state == LeaseState.COOLDOWN:
                    metrics.REFRESH_SUPPRESSED.labels(ns.name, SuppressReason.COOLDOWN).inc()
                    out[key] = refused_by_failure(r.failure, r.lease_pttl_ms / 1000)
                else:
                    metrics.REFRESH_SUPPRESSED.labels(ns.name, SuppressReason.LEASE_HELD).inc()
                    if hub.ready_since(ns.name, key, started):
                        due.add(key)  # published between its read and its registration
            self._loop(handles, [key for key in handles if key not in out], due, deadline)

    def _loop(self, handles: dict[str, WaitHandle], pending: list[str], due: set[str], deadline: float) -> None:
        """Wait for the pending keys together, re-reading those published (or, at the end of a
        re-read slice, all) in one round trip per node, until each is answered or time is up."""
        out, hub = self.out, self.path._waiter
        errored: set[str] = set()
        read_all = False  # whether the last re-read covered every key still pending
        while pending:
            if due:  # even at the deadline: a key published just before it is served, not refused
                read_all = due >= set(pending)
                for key in due:
                    handles[key].mark()
                self._reread(sorted(due), errored)
                pending = [key for key in pending if key not in out]
                if not pending:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not read_all:  # the deadline came while enqueueing: read every key once more
                    due = set(pending)
                    continue
                for key in pending:
                    out[key] = answers.cold_wait_timed_out(self.path.settings.cold_wait_timeout_seconds)
                return
            slice_ = hub.connected_slice if hub.connected.is_set() else hub.disconnected_slice
            slice_end = time.monotonic() + min(remaining, slice_)
            for key in pending:
                # Returns at once for a key published already: together, no longer than the slice.
                status = handles[key].wait(max(0.0, slice_end - time.monotonic()))
                handed = handles[key].handed_over
                if status is not None and handed is not None:
                    # The origin's answer may not be stored: this is the one copy there is.
                    out[key] = Unstored(handed.body, handed.content_type)
                elif status == ReadyStatus.ERROR:
                    errored.add(key)
            pending = [key for key in pending if key not in out]
            due = set(pending)  # a publish or the slice's end: read again, as a single read does

    def _reread(self, keys: list[str], errored: set[str]) -> None:
        out = self.out
        wins: dict[str, tuple[str, RefreshReason, int]] = {}
        for key, (r, token) in self._read(keys).items():
            if r.has_value and r.decision is not Decision.MISS:
                out[key] = Served(r, AnswerOutcome.MISS, r.now_ms)
                if r.won_lease:  # a value landed, and is early or stale already
                    wins[key] = (token, RefreshReason(r.decision.value.lower()), r.now_ms)
            elif r.won_lease:
                # Its refresher died, or its cooldown ran out: take over and enqueue, once.
                wins[key] = (token, RefreshReason.MISS, r.now_ms)
            elif r.lease_state == LeaseState.COOLDOWN or key in errored:
                out[key] = refused_by_failure(r.failure, max(r.lease_pttl_ms, 1000) / 1000)
        for key, refusal in self._enqueue(wins).items():
            out.setdefault(key, refusal)
