"""Admission control for one web process: a bound on the reads it works on at once.

Past its capacity a process that queues every request makes all of them slow, and the work it
does for requests whose clients already gave up is lost (a cold wait that times out still cost a
read, a lease, a task and an origin call nobody reads). Bounding the reads in flight keeps the
ones admitted within their time and refuses the rest at once with a 503 and ``Retry-After``,
which a client or a load balancer can act on. Cheap reads bypass the bound: a near-cache hit (no
Redis) and a reader that joins waiters of its process already waiting for the key (no read of
its own; ``MAX_COLD_WAITERS`` bounds those).

The bound adapts to what the refresh tier keeps up with. ``MAX_REQUESTS_IN_FLIGHT`` is its
ceiling; a cold miss's wait (queue and refresh) is the signal. While the slow tail of the
waits of the last window exceeds the target (half of ``COLD_WAIT_TIMEOUT_SECONDS``, or
twice the waits seen when nothing queued, for an origin that is simply slow), the bound shrinks
in proportion; while the waits are within the target and the bound is what holds reads back,
it grows again (by a quarter a window), and it is back at its ceiling once no cold wait has
ended for ``QUIET_SECONDS`` (what shrank it says nothing about now). So a burst that the workers would take longer than
the cold-wait timeout to serve is answered in part at once, and the part admitted is served,
instead of all of it timing out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

WINDOW_SECONDS = 0.5  # how often the bound is reconsidered (at most)
FLOOR = 8  # the bound never adapts below this many reads in flight
WINDOW_SAMPLES = 512  # waits kept per window
T = TypeVar("T")
QUIET_SECONDS = 2.0  # no cold wait ended for this long: the bound goes back to its ceiling


class Admission:
    """At most `limit` reads in flight at once (`ceiling`; None: no bound), adapted to the cold
    waits reported by `observe_wait` when `target_wait_s` is given. Never blocks: a read that
    finds every slot taken is refused on the spot."""

    def __init__(
        self, ceiling: int | None, target_wait_s: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ceiling = ceiling
        self._clock = clock
        self.limit = float(ceiling) if ceiling else 0.0
        self.target_wait_s = target_wait_s
        self.in_flight = 0
        self._lock = threading.Lock()
        self._window_start = clock()
        self._waits: list[float] = []
        self._peak = 0
        self._unqueued_wait_s: float | None = None  # the waits when nothing queued, slowly forgotten
        self._last_wait_at = self._window_start

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """`with admission.slot() as admitted:` -- False when the process is at its bound."""
        with self._lock:
            admitted = self.ceiling is None or self.in_flight < self.limit
            if not admitted and self._forget_if_quiet_locked():
                admitted = self.in_flight < self.limit
            if admitted:
                self.in_flight += 1
                self._peak = max(self._peak, self.in_flight)
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self.in_flight -= 1

    def shrunk_limit(self) -> float | None:
        """The bound while it is below its ceiling (the refresh tier was behind), else None. A bound
        no cold wait has confirmed for QUIET_SECONDS is back at its ceiling first: one overload
        earlier must not refuse a later herd's waiters (it refused a third of every 1 000-client
        herd on an idle stack long after an overload run had ended)."""
        if self.ceiling is None:
            return None
        with self._lock:
            if self.limit < self.ceiling:
                self._forget_if_quiet_locked()
            return self.limit if self.limit < self.ceiling else None

    def _forget_if_quiet_locked(self) -> bool:
        # No cold wait ended for a while: what shrank the bound says nothing about now.
        if self._clock() - self._last_wait_at <= QUIET_SECONDS:
            return False
        self.limit = float(self.ceiling or 0)
        return True

    def observed(self, answer: T, started: float) -> T:
        """`answer`, after recording how long since `started` the cold miss that gave it waited."""
        self.observe_wait(time.monotonic() - started)
        return answer

    def observe_wait(self, seconds: float) -> None:
        """An admitted cold miss was answered after `seconds` (served, refused or timed out)."""
        if self.ceiling is None or self.target_wait_s is None:
            return
        now = self._clock()
        with self._lock:
            self._last_wait_at = now
            if len(self._waits) < WINDOW_SAMPLES:
                self._waits.append(seconds)
            if now - self._window_start < WINDOW_SECONDS:
                return
            waits, peak = sorted(self._waits), self._peak
            self._waits, self._peak, self._window_start = [], self.in_flight, now
            self._adapt(waits[len(waits) // 2], waits[int(0.9 * (len(waits) - 1))], peak)

    def _adapt(self, median: float, tail: float, peak: int) -> None:
        assert self.ceiling is not None and self.target_wait_s is not None
        base = median if self._unqueued_wait_s is None else min(median, self._unqueued_wait_s * 1.05)
        self._unqueued_wait_s = base
        target = max(self.target_wait_s, 2 * base)
        if tail > target:
            self.limit = max(float(FLOOR), self.limit * max(0.5, target / tail))
        elif peak >= 0.8 * self.limit:
            self.limit = min(float(self.ceiling), self.limit * 1.25 + 1)
