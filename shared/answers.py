"""What a read answers (a value, an unstored value, a refusal), why a cooling key fails, what a hand-off raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared import metrics
from shared.protocol import SUPPRESSED_BY_LEASE, AnswerOutcome, FailureCode, LeaseState, Refusal, SuppressReason
from shared.store import ReadResult

if TYPE_CHECKING:
    from shared.nearcache import NearHit


@dataclass(frozen=True)
class Served:
    """A stored value (or a cached 404) to answer with; `outcome` is hit, early, stale or miss.
    `now_ms` is the Redis clock at the answer (estimated from the read's offset on a near-cache
    hit), for Age and max-age."""

    result: ReadResult
    outcome: AnswerOutcome
    now_ms: int
    from_near_cache: bool = False


def count_suppressed(ns_name: str, r: ReadResult) -> None:
    """A read that wanted a refresh found the key's lease not free: count why (held by default)."""
    reason = SUPPRESSED_BY_LEASE.get(LeaseState(r.lease_state), SuppressReason.LEASE_HELD)
    metrics.REFRESH_SUPPRESSED.labels(ns_name, reason).inc()


def near_answer(ns_name: str, hit: NearHit[ReadResult]) -> Served:
    """What a near-cache hit answers: HIT before the value's HIT moment; past it, while a refresh
    of the key is under way (``NearHit.pending``), what Redis would answer every read meanwhile
    -- EARLY until the value's expiry, STALE after it -- its refresh counted as suppressed as
    Redis's answer would be (shared/readpath.py)."""
    r = hit.entry
    if not hit.pending:
        return Served(r, AnswerOutcome.HIT, hit.redis_now_ms, from_near_cache=True)
    fresh = r.soft_ms is not None and hit.redis_now_ms < r.soft_ms
    if r.lease_state != LeaseState.FREE:  # FREE: an early refresh held back (counted once, as behind)
        count_suppressed(ns_name, r)
    outcome = AnswerOutcome.EARLY if fresh else AnswerOutcome.STALE
    return Served(r, outcome, hit.redis_now_ms, from_near_cache=True)


@dataclass(frozen=True)
class Unstored:
    """An origin answer the origin forbade storing (no-store, private), for this read only: handed
    over by the refresh it waited for (or fetched by a naive read). It has no stored life."""

    body: bytes
    content_type: str

    @property
    def outcome(self) -> AnswerOutcome:
        return AnswerOutcome.MISS


@dataclass(frozen=True)
class Refused:
    """No value to answer with: an HTTP status, a stable error code and when to retry."""

    status: int
    error: str
    detail: str
    retry_after_s: float | None = None

    @property
    def outcome(self) -> AnswerOutcome:
        return AnswerOutcome.TIMEOUT if self.error == Refusal.COLD_WAIT_TIMEOUT else AnswerOutcome.ERROR


# Refusals that are nobody's failure: the process is at a bound, or the refresh is still running.
OVERLOADED = Refused(503, Refusal.OVERLOADED, "too many requests in flight in this process; retry shortly", 1)
NOT_ENQUEUED = Refused(503, Refusal.BROKER_UNAVAILABLE, "could not enqueue the refresh", 1)
TOO_MANY_WAITERS = Refused(503, Refusal.TOO_MANY_WAITERS, "too many requests are waiting for cold keys", 1)


def cold_wait_timed_out(retry_after_s: float) -> Refused:
    return Refused(503, Refusal.COLD_WAIT_TIMEOUT, "the value is being computed; retry shortly", retry_after_s)


# The answer to a cold read while its key cools down after a failed refresh, by the failure's
# code (which the worker stores with the cooldown), and to a naive read whose origin call failed:
# the status is 502 for each, the detail says what failed and what to look at. A fixed text, never
# the failure's own message: that may hold what a client must not see (a callable's exception
# naming a database DSN with its password); the worker or web log has it for the operator.
FAILURE_DETAILS: dict[FailureCode, str] = {
    FailureCode.ORIGIN_ERROR: "the origin failed to produce a value (see the worker log)",
    FailureCode.ORIGIN_TIMEOUT: "the origin did not answer within its timeout (ORIGIN_TIMEOUT_SECONDS)",
    FailureCode.ORIGIN_TOO_LARGE: "the origin's answer is larger than ORIGIN_MAX_BYTES",
    FailureCode.ORIGIN_UNIMPORTABLE: "the origin callable cannot be imported by the worker (see the worker log)",
    FailureCode.BREAKER_OPEN: (
        "the origin's circuit breaker is open after repeated failures; no call until it half-opens"
    ),
    FailureCode.ORIGIN_BUSY: "every concurrency slot of the origin stayed taken (ORIGIN_MAX_CONCURRENCY)",
    FailureCode.OUT_OF_MEMORY: "Redis is at its maxmemory and refused to store the refreshed value",
}


def refused_by_failure(failure: str, retry_after_s: float | None = None) -> Refused:
    """The 502 of a key whose last origin call failed for `failure` (a FailureCode; an unknown
    or missing one, from an older worker, is a plain origin_error), with its fixed detail; a
    503 when the store, not the origin, refused (out_of_memory)."""
    code = FailureCode.parse(failure)
    return Refused(503 if code is FailureCode.OUT_OF_MEMORY else 502, code, FAILURE_DETAILS[code], retry_after_s)


QUEUE_FULL = Refused(503, Refusal.QUEUE_FULL, "too many refreshes wait in the queue (MAX_QUEUED_REFRESHES)", 1)
OUT_OF_MEMORY = Refused(503, Refusal.OUT_OF_MEMORY, "Redis is at its maxmemory: no new value can be stored now", 1)


Answer = Served | Unstored | Refused


# What the read path's refresh hand-offs raise and a warm-up answers.
class BrokerUnavailable(Exception):
    """The refresh could not be handed to the queue."""


class QueueRefused(BrokerUnavailable):
    """The queue's bound refused the refresh: MAX_QUEUED_REFRESHES messages wait already."""


@dataclass(frozen=True)
class WarmResult:
    """What a warm-up did with each distinct key it was given."""

    enqueued: int
    already_fresh: int
    in_flight: int
    cooling_down: int
    queue_full: int = 0  # not enqueued: MAX_QUEUED_REFRESHES messages waited already


class WarmIncomplete(BrokerUnavailable):
    """The queue refused a warm-up's task part-way: `enqueued` were handed over before it did;
    the other keys' leases were given back, so the same warm-up may simply be sent again (the
    keys enqueued the first time then count as in flight)."""

    def __init__(self, enqueued: int) -> None:
        super().__init__(
            f"the queue refused the warm-up after {enqueued} refreshes were enqueued; send it again to enqueue the rest"
        )
        self.enqueued = enqueued
