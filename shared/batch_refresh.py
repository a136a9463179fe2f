"""Refreshes through a batch origin (worker tier): one origin call for many keys, each key written alone.

``Refresher`` (shared/refresher.py) claims the key and keeps its lease renewed as for any key,
then hands the run here instead of taking an origin slot:

1. the key joins its namespace's batch in this worker process (``BatchCollector``); the refresh
   that opened the batch leads it, the others wait for it;
2. the leader waits for the batch to fill (``batch_max_keys``) or go quiet (``batch_window_ms``),
   takes **one** origin slot for the whole call (ORIGIN_MAX_CONCURRENCY counts calls, not keys),
   and makes the call through the origin's breaker (one success or failure) under the
   namespace's deadline (``origin_timeout_seconds``), renewing the slot as any run does;
3. each key's own run then writes its own answer under its own lease and fences
   (``FENCED_WRITE``: a key purged or taken over meanwhile is not written), a left-out key as
   its 404, or records its own failure and cooldown: the call's failure is every key's.

``started`` (the start fence) is the moment the breaker admitted the call, after every key of
the batch was claimed, so a purge of any of them before the call fences its write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from shared import metrics
from shared.batch_origin import Batch, BatchCollector, BatchHttpOrigin, KeyAnswer
from shared.breaker import BreakerOpen, OriginBreaker
from shared.namespaces import Namespace
from shared.origin import OriginError, OriginResponse
from shared.origin_adapters import BuiltOnce, OriginAdapters
from shared.origin_slots import OriginSlots
from shared.protocol import FailureCode, RefreshOutcome, RefreshReason
from shared.refreshlog import RefreshReport
from shared.settings import Settings
from shared.store import CacheStore, Fence
from shared.tasks import SLOT_WAIT_FACTOR, RefreshRequest, longest_refresh_seconds


class Renewing(Protocol):
    """What a run's lease renewer (refresher.LeaseRenewer) offers: `lost`, and whether it renews a slot too."""

    lost: threading.Event
    holds_slot: bool


class SlotTimeout(Exception):
    """No origin slot came free for the batch call."""


class BatchedRefresher:
    """One per worker process: the batch calls of every batch-origin namespace."""

    def __init__(
        self,
        settings: Settings,
        store: CacheStore,
        origins: OriginAdapters,
        breaker: Callable[[Namespace], OriginBreaker],
        slots: Callable[[Namespace], OriginSlots],
    ) -> None:
        self.settings, self.store, self._origins = settings, store, origins
        self._breaker, self._slots = breaker, slots
        self._collectors: BuiltOnce[BatchCollector] = BuiltOnce()
        self._batch_origins: BuiltOnce[BatchHttpOrigin] = BuiltOnce()

    def collector(self, ns: Namespace) -> BatchCollector:
        assert ns.batch is not None
        config = ns.batch
        return self._collectors.get(ns.name, lambda: BatchCollector(config))

    def origin(self, ns: Namespace) -> BatchHttpOrigin:
        connections = max(8, self.settings.worker_concurrency)
        return self._batch_origins.get(
            ns.name, lambda: BatchHttpOrigin(ns, self.settings.origin_max_bytes, connections)
        )

    def call_and_write(self, ns: Namespace, req: RefreshRequest, run_token: str, renewer: Renewing) -> RefreshReport:
        """Fetch the key in a batch call and write (or fail) it under the run's lease."""
        key, reason, won_at_ms = req.key, req.reason, req.won_at_ms
        if renewer.lost.is_set():
            return RefreshReport(RefreshOutcome.LOST_LEASE)
        batch, leader = self.collector(ns).join(key)
        if leader:
            self._call(ns, batch, run_token, renewer)
        elif not batch.done.wait(longest_refresh_seconds(self.settings, ns.origin_timeout_seconds)):
            # The leader's run ended without a word (its worker is stopping): this key fails alone.
            self.store.record_failure(ns, key, run_token, reason=FailureCode.ORIGIN_TIMEOUT)
            return RefreshReport(RefreshOutcome.ORIGIN_ERROR, FailureCode.ORIGIN_TIMEOUT, "the batch call never ended")
        try:
            answer = batch.answer(key)
        except SlotTimeout:
            self.store.record_failure(ns, key, run_token, origin_called=False, reason=FailureCode.ORIGIN_BUSY)
            return RefreshReport(
                RefreshOutcome.SLOT_TIMEOUT, FailureCode.ORIGIN_BUSY, f"no concurrency slot of origin {ns.origin_name}"
            )
        except BreakerOpen as exc:
            self.store.record_failure(
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
            self.store.record_failure(ns, key, run_token, reason=exc.code)
            return RefreshReport(RefreshOutcome.ORIGIN_ERROR, exc.code, f"batch origin of {ns.name}: {exc}")
        # As refresher._duration_start: a cold miss's or warm-up's duration starts at its call.
        started = batch.started_ms if reason in (RefreshReason.MISS, RefreshReason.WARM) else won_at_ms
        return self._write(ns, key, Fence(run_token, batch.started_ms, started), answer, won_at_ms)

    def _call(self, ns: Namespace, batch: Batch, run_token: str, renewer: Renewing) -> None:
        """Gather the batch and make its call: every key's answer, or the call's error, in `batch`."""
        try:
            keys = self.collector(ns).gather(batch)
            batch.answers, batch.started_ms = self._call_origin(ns, keys, run_token, renewer)
        except Exception as exc:  # noqa: BLE001 - whatever failed the call fails each of its keys
            batch.error = exc
        finally:
            batch.done.set()

    def _call_origin(
        self, ns: Namespace, keys: list[str], run_token: str, renewer: Renewing
    ) -> tuple[dict[str, KeyAnswer], int]:
        """One slot, one breaker admission, one call under the namespace's deadline."""
        slots = self._slots(ns)
        if not slots.acquire(
            run_token, ns.origin_max_concurrency, self.store.lease_ttl_ms, ns.origin_timeout_seconds * SLOT_WAIT_FACTOR
        ):
            raise SlotTimeout()
        renewer.holds_slot = True  # the leader's renewer keeps the call's slot too
        t0 = time.perf_counter()
        try:
            deadline = time.monotonic() + ns.origin_timeout_seconds
            result = self._breaker(ns).call_timed(self.origin(ns).fetch_many, keys, deadline)
        except OriginError as exc:  # not BreakerOpen: then no call was made
            self._count(ns, exc.outcome, len(keys), t0)
            raise
        finally:
            renewer.holds_slot = False
            slots.release(run_token)
        self._count(ns, "ok", len(keys), t0)
        return result

    @staticmethod
    def _count(ns: Namespace, outcome: str, keys: int, t0: float) -> None:
        # Once per call, not per key: ORIGIN_BATCH_KEYS says how many keys each call asked for.
        metrics.ORIGIN_CALLS.labels(ns.name, outcome).inc()
        metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
        metrics.ORIGIN_BATCH_KEYS.labels(ns.name).observe(keys)

    def _write(self, ns: Namespace, key: str, fence: Fence, answer: KeyAnswer, won_at_ms: int) -> RefreshReport:
        store = self.store
        if isinstance(answer, OriginResponse):
            metrics.ORIGIN_BYTES.labels(ns.name).inc(len(answer.body))
            policy = self._origins.cache_policy(ns, answer.cache)
            if policy.storable:
                # The call's tag header (Surrogate-Key) cannot say which value a tag belongs to:
                # each value carries them all. A purge then drops too much, never too little.
                result = store.fenced_write(
                    ns,
                    key,
                    fence,
                    value=answer.body,
                    content_type=answer.content_type,
                    lifetimes=policy.lifetimes,
                    tags=answer.tags,
                )
            else:
                hand_over = OriginResponse(answer.body, answer.content_type)
                result = store.drop_uncacheable(ns, key, fence, hand_over=hand_over)
        else:
            result = store.fenced_write(ns, key, fence, value=b"", content_type="application/json", negative=True)
        if result.written:
            metrics.REFRESH_LAG.labels(ns.name).observe(max(0.0, (result.written_at_ms - won_at_ms) / 1000))
        return RefreshReport(result.status)
