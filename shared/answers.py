"""What a read answers (a value, an unstored value or a refusal), and the failure codes a cooling key answers with."""

from __future__ import annotations

from dataclasses import dataclass

from shared.protocol import AnswerOutcome, Refusal
from shared.store import ReadResult


@dataclass(frozen=True)
class Served:
    """A stored value (or a cached 404) to answer with; `outcome` is hit, early, stale or miss.
    `now_ms` is the Redis clock at the answer (estimated from the read's offset on a near-cache
    hit), for Age and max-age."""

    result: ReadResult
    outcome: AnswerOutcome
    now_ms: int
    from_near_cache: bool = False


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
# code (which the worker stores with the cooldown): the status is 502 for each, the detail
# says what failed and what to look at.
FAILURE_DETAILS = {
    "origin_error": "the origin failed to produce a value (see the worker log)",
    "origin_timeout": "the origin did not answer within its timeout (ORIGIN_TIMEOUT_SECONDS)",
    "origin_too_large": "the origin's answer is larger than ORIGIN_MAX_BYTES",
    "origin_unimportable": "the origin callable cannot be imported by the worker (see the worker log)",
    "breaker_open": "the origin's circuit breaker is open after repeated failures; no call until it half-opens",
    "origin_busy": "every concurrency slot of the origin stayed taken (ORIGIN_MAX_CONCURRENCY)",
}


def refused_by_failure(failure: str, retry_after_s: float) -> Refused:
    """The 502 of a cold key whose last refresh failed for `failure` (a code from FAILURE_DETAILS;
    an unknown or missing one, from an older worker, is a plain origin_error)."""
    error = failure if failure in FAILURE_DETAILS else "origin_error"
    return Refused(502, error, FAILURE_DETAILS[error], retry_after_s)


Answer = Served | Unstored | Refused
