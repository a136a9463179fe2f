"""Last-minute rates per namespace (answers by outcome, origin calls by outcome) for the status page,
summed over every web and worker process of every host.

Each process adds its counts up in memory (a dict under a lock: nothing on the request path
touches Redis, so near-cache hits stay free of round trips) and a background thread flushes them
once a second into per-second Redis hashes, `<prefix>:rates:<unix second>` (Redis clock), with field
`<namespace>|<series>|<outcome>` and a two-minute expiry. The status page sums the last 60 of
them. Prometheus counters could give the same figure only by sampling them over time in the
process that answers the status page; these buckets answer at once, in any process, after any
restart. A process that dies loses at most its last second of counts.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.clock import redis_now_ms
from shared.keys import DEFAULT_KEYSPACE, Keyspace

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
BUCKET_TTL_SECONDS = 2 * WINDOW_SECONDS
FLUSH_INTERVAL_SECONDS = 1.0
SERIES = ("answers", "origin_calls")


def bucket_key(second: int, keys: Keyspace = DEFAULT_KEYSPACE) -> str:
    return keys.rates(second)


class RateRecorder:
    """One per process (RECORDER). `add` is cheap and never does I/O; the flusher thread, started
    on the first `add` in each process (so after any fork), does the Redis writes."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_SECONDS) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], int] = defaultdict(int)
        self._client: Any | None = None
        self._client_factory: Callable[[], Any] | None = None
        self._keys = DEFAULT_KEYSPACE
        self._flusher_pid: int | None = None

    def configure(self, client_factory: Callable[[], Any], keys: Keyspace = DEFAULT_KEYSPACE) -> None:
        """Flush through clients made by `client_factory` (one per process, made after any fork),
        into the buckets of `keys`. The web tier's app factory and the worker's Celery app call
        this; a process that never does (a unit test driving an engine) only counts in memory."""
        self._client_factory = client_factory
        self._keys = keys

    def bind(self, client: Any, keys: Keyspace = DEFAULT_KEYSPACE) -> None:
        """Flush through this client (tests)."""
        self._client = client
        self._keys = keys

    def add(self, series: str, namespace: str, outcome: str, amount: float = 1) -> None:
        # Nothing inside the lock may yield: under gevent the lock can be a native one (made at
        # fork, before the worker patches threading), and a greenlet switch while holding it would
        # block the whole process. Starting the flusher yields, so it happens outside.
        with self._lock:
            self._pending[(namespace, series, outcome)] += int(amount)
            start = self._flusher_pid != os.getpid() and self._client_factory is not None
            if start:
                self._flusher_pid = os.getpid()
        if start:
            threading.Thread(target=self._run, name="herdless-rates", daemon=True).start()

    def _after_fork_in_child(self) -> None:
        # The parent's counts and client are the parent's, and its lock may have been held.
        self._lock = threading.Lock()
        self._pending = defaultdict(int)
        if self._client_factory is not None:
            self._client = None

    def _run(self) -> None:
        pid = os.getpid()
        while self._flusher_pid == pid:
            time.sleep(self._interval_s)
            if self._client is None and self._client_factory is not None:
                try:
                    self._client = self._client_factory()
                except Exception as exc:  # noqa: BLE001 - retried at the next interval
                    log.debug("rate counts not flushed: %s", type(exc).__name__)
                    continue
            self.flush()

    def flush(self) -> None:
        """Write the pending counts into the current second's bucket; on a Redis error keep them
        for the next flush (they then count a second or so late)."""
        client = self._client
        if client is None:
            return
        with self._lock:
            pending, self._pending = self._pending, defaultdict(int)
        if not pending:
            return
        try:
            key = bucket_key(redis_now_ms(client) // 1000, self._keys)
            pipe = client.pipeline(transaction=False)
            for (namespace, series, outcome), n in pending.items():
                pipe.hincrby(key, f"{namespace}|{series}|{outcome}", n)
            pipe.expire(key, BUCKET_TTL_SECONDS)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - never let the flusher die
            log.debug("rate counts not flushed: %s", type(exc).__name__)
            with self._lock:
                for k, n in pending.items():
                    self._pending[k] += n


RECORDER = RateRecorder()
os.register_at_fork(after_in_child=RECORDER._after_fork_in_child)
atexit.register(RECORDER.flush)


@dataclass
class NamespaceRates:
    """One namespace's counts over the last minute."""

    answers: dict[str, int] = field(default_factory=dict)
    origin_calls: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        answered = sum(self.answers.values())
        fresh = self.answers.get("hit", 0) + self.answers.get("early", 0)
        called = sum(self.origin_calls.values())
        return {
            "answers": self.answers,
            "answers_total": answered,
            "answers_per_second": answered / WINDOW_SECONDS,
            "fresh_share": fresh / answered if answered else None,
            "origin_calls": self.origin_calls,
            "origin_calls_total": called,
            "origin_calls_per_second": called / WINDOW_SECONDS,
        }


def last_minute(client: Any, namespaces: Iterable[str], keys: Keyspace = DEFAULT_KEYSPACE) -> dict[str, NamespaceRates]:
    """Counts of the last WINDOW_SECONDS (the current second included) per namespace: two round
    trips (the Redis clock, then every bucket in one pipeline)."""
    rates = {name: NamespaceRates() for name in namespaces}
    now_s = redis_now_ms(client) // 1000
    pipe = client.pipeline(transaction=False)
    for second in range(now_s - WINDOW_SECONDS + 1, now_s + 1):
        pipe.hgetall(bucket_key(second, keys))
    for bucket in pipe.execute():
        for raw_field, raw_count in bucket.items():
            name = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
            namespace, _, rest = name.partition("|")
            series, _, outcome = rest.partition("|")
            ns = rates.get(namespace)
            if ns is None or series not in SERIES:
                continue
            counts = ns.answers if series == "answers" else ns.origin_calls
            counts[outcome] = counts.get(outcome, 0) + int(raw_count)
    return rates
