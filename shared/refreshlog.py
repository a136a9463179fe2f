"""What a worker says about its refreshes: one line per failure, a periodic summary of the rest.

A busy worker runs thousands of refreshes a minute; a line for each (Celery's "received" and
"succeeded" were two) drowns the one line that matters. So at INFO a process logs each refresh
that wrote nothing because the origin or its breaker failed (WARNING, with the reason), and
every SUMMARY_SECONDS, if it refreshed anything, one summary: how many refreshes, how many
wrote, how many failed and why. Every other refresh is a DEBUG line (LOG_LEVEL=debug).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass

from shared.protocol import RefreshOutcome

log = logging.getLogger("herdless.refresh")

SUMMARY_SECONDS = 60.0

# Refresh outcomes that mean "the origin gave no value": failures. The rest either stored
# something (written, revalidated, uncacheable: handed to the waiters), lost a race that a newer
# refresh won (fenced, lost_lease, expired), or named a namespace this worker does not know
# (logged where it is dropped): nothing to act on here.
FAILED_OUTCOMES = frozenset(
    {
        RefreshOutcome.ORIGIN_ERROR,
        RefreshOutcome.BREAKER_OPEN,
        RefreshOutcome.SLOT_TIMEOUT,
        RefreshOutcome.OUT_OF_MEMORY,
    }
)
WROTE_OUTCOMES = frozenset({RefreshOutcome.WRITTEN, RefreshOutcome.REVALIDATED, RefreshOutcome.UNCACHEABLE})


@dataclass(frozen=True)
class RefreshReport:
    """How one refresh ended: `outcome` (a RefreshOutcome, as counted in herdless_refresh_total:
    a word of its own is refused here); for a failure, `error` (the FailureCode cold reads answer
    with: origin_timeout, breaker_open, ...) and `detail` (the exception's message, never a
    secret: URLs carry no credentials, no header values)."""

    outcome: str
    error: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", RefreshOutcome(self.outcome))

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES

    def describe(self) -> str:
        """`origin_error (origin_timeout): origin api:443: origin timed out after 10s`; the code in
        parentheses only when it says more than the outcome."""
        if not self.failed:
            return self.outcome
        text = self.outcome if self.error in ("", self.outcome) else f"{self.outcome} ({self.error})"
        return f"{text}: {self.detail}" if self.detail else text


class RefreshLog:
    """Counts this process's refreshes and logs as described above. Thread- and greenlet-safe;
    the summary comes from a daemon timer started on the first refresh of each process (a
    prefork child does not inherit its parent's threads)."""

    def __init__(self, interval: float = SUMMARY_SECONDS) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._outcomes: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._timer_pid: int | None = None
        self._since = time.monotonic()

    def record(self, namespace: str, key: str, report: RefreshReport) -> None:
        if report.failed:
            # The key is the user's own data; a failure line names it so the operator can retry it.
            log.warning("refresh of %s/%r failed: %s", namespace, key, report.describe())
        else:
            log.debug("refresh of %s/%r: %s", namespace, key, report.outcome)
        with self._lock:
            self._outcomes[report.outcome] += 1
            if report.failed:
                self._errors[report.error or report.outcome] += 1
            if self._timer_pid != os.getpid():
                self._timer_pid = os.getpid()
                threading.Thread(target=self._run, name="refresh-summary", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def flush(self) -> str | None:
        """Log (and return) the summary of the refreshes since the last one; nothing if none ran."""
        with self._lock:
            outcomes, errors = self._outcomes, self._errors
            self._outcomes, self._errors = Counter(), Counter()
            now, since, self._since = time.monotonic(), self._since, time.monotonic()
        total = sum(outcomes.values())
        if not total:
            return None
        wrote = sum(n for o, n in outcomes.items() if o in WROTE_OUTCOMES)
        failed = sum(n for o, n in outcomes.items() if o in FAILED_OUTCOMES)
        other = {o: n for o, n in outcomes.items() if o not in WROTE_OUTCOMES | FAILED_OUTCOMES}
        line = f"refresh summary, last {now - since:.0f} s: {total} refreshes, {wrote} wrote a value, {failed} failed"
        if errors:
            line += " (" + ", ".join(f"{e} {n}" for e, n in sorted(errors.items())) + ")"
        if other:
            line += ", " + ", ".join(f"{o} {n}" for o, n in sorted(other.items()))
        log.info("%s", line)
        return line
