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
import math
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
# Distinct keys read, per namespace and second, for the status page's ideal origin calls (a key
# read in a TTL window costs an ideal cache one call): at most this many kept per flush, so a
# scan of millions of keys a second costs bounded memory (the count is then a lower bound).
MAX_KEYS_PER_FLUSH = 20_000


def bucket_key(second: int, keys: Keyspace = DEFAULT_KEYSPACE) -> str:
    return keys.rates(second)


class RateRecorder:
    """One per process (RECORDER). `add` is cheap and never does I/O; the flusher thread, started
    on the first `add` in each process (so after any fork), does the Redis writes."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_SECONDS) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], int] = defaultdict(int)
        self._keys_read: dict[str, set[str]] = defaultdict(set)
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

    def note_key(self, namespace: str, key: str) -> None:
        """A read of `key`: counted once per second however often it is read. No I/O (add()
        starts the flusher: every read also counts an answer)."""
        with self._lock:
            seen = self._keys_read[namespace]
            if len(seen) < MAX_KEYS_PER_FLUSH:
                seen.add(key)

    def _after_fork_in_child(self) -> None:
        # The parent's counts and client are the parent's, and its lock may have been held.
        self._lock = threading.Lock()
        self._pending = defaultdict(int)
        self._keys_read = defaultdict(set)
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
            keys_read, self._keys_read = self._keys_read, defaultdict(set)
        if not pending and not keys_read:
            return
        try:
            second = redis_now_ms(client) // 1000
            key = bucket_key(second, self._keys)
            pipe = client.pipeline(transaction=False)
            for (namespace, series, outcome), n in pending.items():
                pipe.hincrby(key, f"{namespace}|{series}|{outcome}", n)
            pipe.expire(key, BUCKET_TTL_SECONDS)
            for namespace, seen in keys_read.items():
                if seen:
                    read_key = self._keys.keys_read(namespace, second)
                    pipe.pfadd(read_key, *seen)
                    pipe.expire(read_key, BUCKET_TTL_SECONDS)
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
    # Distinct keys read over the last `ttl_s` seconds (at most the minute), and that TTL: an
    # ideal cache calls the origin once per key read per TTL window.
    keys_read: int | None = None
    ttl_s: float | None = None
    # The same seconds' origin calls, so that the two compare over one window.
    span_s: int = 0
    recent_origin_calls: int = 0

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
            "keys_read_last_ttl": self.keys_read,
            "ideal_origin_calls_per_second": (
                None if self.keys_read is None or not self.ttl_s else self.keys_read / self.ttl_s
            ),
            # Over the seconds the keys were counted in (the last TTL, whole seconds, at most 59).
            "recent_origin_calls_per_second": self.recent_origin_calls / self.span_s if self.span_s else None,
        }


def last_minute(
    client: Any,
    namespaces: Iterable[str],
    keys: Keyspace = DEFAULT_KEYSPACE,
    ttls: dict[str, float] | None = None,
) -> dict[str, NamespaceRates]:
    """Counts of the last WINDOW_SECONDS (the current second included) per namespace, and with
    `ttls` ({namespace: cache TTL, s}) the distinct keys read over each one's last TTL: two round
    trips (the Redis clock, then every bucket and count in one pipeline)."""
    rates = {name: NamespaceRates() for name in namespaces}
    now_s = redis_now_ms(client) // 1000
    pipe = client.pipeline(transaction=False)
    for second in range(now_s - WINDOW_SECONDS + 1, now_s + 1):
        pipe.hgetall(bucket_key(second, keys))
    counted = [n for n in rates if ttls and ttls.get(n)]
    for name in counted:
        assert ttls is not None
        rates[name].ttl_s = ttls[name]
        # The seconds wholly inside the last TTL (the current one is still filling).
        span = rates[name].span_s = max(1, min(WINDOW_SECONDS - 1, math.ceil(ttls[name])))
        pipe.pfcount(*[keys.keys_read(name, second) for second in range(now_s - span, now_s)])
    replies = pipe.execute()
    for name, count in zip(counted, replies[WINDOW_SECONDS:], strict=True):
        rates[name].keys_read = int(count)
    spans = {name: rates[name].span_s for name in counted}
    for offset, bucket in enumerate(replies[:WINDOW_SECONDS]):
        age = WINDOW_SECONDS - 1 - offset  # 0: the current second
        for raw_field, raw_count in bucket.items():
            name = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
            namespace, _, rest = name.partition("|")
            series, _, outcome = rest.partition("|")
            ns = rates.get(namespace)
            if ns is None or series not in SERIES:
                continue
            counts = ns.answers if series == "answers" else ns.origin_calls
            counts[outcome] = counts.get(outcome, 0) + int(raw_count)
            if series == "origin_calls" and 1 <= age <= spans.get(namespace, 0):
                ns.recent_origin_calls += int(raw_count)
    return rates
