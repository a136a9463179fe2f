"""Admission control for one web process: a bound on the reads it works on at once.

Past its capacity a process that queues every request makes all of them slow, and the work it
does for requests whose clients already gave up is lost (a cold wait that times out still cost a
read, a lease, a task). Bounding the reads in flight keeps the ones admitted within their time
and refuses the rest at once with a 503 and ``Retry-After``, which a client or a load balancer
can act on. Cheap reads bypass the bound: a near-cache hit (no Redis) and a reader that joins
waiters of its process already waiting for the key (no read of its own; ``MAX_COLD_WAITERS``
bounds those).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Admission:
    """At most `limit` reads in flight at once (None: no bound). Never blocks: a read that finds
    every slot taken is refused on the spot."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self.in_flight = 0

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """`with admission.slot() as admitted:` -- False when the process is at its bound."""
        with self._lock:
            admitted = self.limit is None or self.in_flight < self.limit
            if admitted:
                self.in_flight += 1
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self.in_flight -= 1
