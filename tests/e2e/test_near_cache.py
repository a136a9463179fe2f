"""The near-cache end to end: two gunicorn processes, a real Redis, workers and the demo origin.

X, the coherence bound the README states: after a purge returns (or a new value is written),
no web process serves the previous value to a read that starts more than X ms later.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from shared.keys import EntryKeys
from shared.store import SUBSCRIBER_NAME
from tests.faults.observe import web_metric
from tests.stack import Stack, stack_for, wait_until

ADMIN = "near-cache-admin-e63cae38c4ac850a585b6ea"
COHERENCE_MS = 100  # X in the README

NAMESPACES = """
[namespaces.nc]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""


STACK_NAMESPACES = NAMESPACES
STACK_ENV = {
    "WEB_CONCURRENCY": "2",
    "ADMIN_TOKEN": ADMIN,
    "ORIGIN_LATENCY_MS": "50",
}


def _fresh_connection_get(stack: Stack, key: str) -> requests.Response:
    # A new connection per read, so gunicorn's two processes share the reads.
    return requests.get(stack.url("nc", key), timeout=10, headers={"Connection": "close"})


SENTINEL = "hl:monitor-sentinel"


def _watch_redis_commands(stack: Stack, needle: str) -> tuple[list[str], threading.Thread]:
    """Every command naming `needle`, until a command names SENTINEL (MONITOR lists commands in
    order, so every command before it has been seen)."""
    seen: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with stack.redis.client().monitor() as m:
            ready.set()
            for cmd in m.listen():
                if SENTINEL in cmd["command"]:
                    return
                if needle in cmd["command"]:
                    seen.append(cmd["command"])

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    return seen, thread


def test_a_warm_key_costs_at_most_one_redis_read_per_web_process_per_fresh_lifetime(stack: Stack) -> None:
    key = "warm-monitored"
    assert _fresh_connection_get(stack, key).headers["X-Cache"] == "MISS"
    hits_before = web_metric(stack, "herdless_near_cache_total", result="hit")
    seen, thread = _watch_redis_commands(stack, EntryKeys.of("nc", key).entry)
    try:
        for _ in range(1000):
            r = _fresh_connection_get(stack, key)
            assert r.status_code == 200 and r.headers["X-Cache"] == "HIT"
    finally:
        stack.redis.client().get(SENTINEL)
        thread.join(5)
    reads = [c for c in seen if c.startswith("EVALSHA")]
    assert len(reads) <= 2, reads  # one per gunicorn process at most, within the 60 s lifetime
    assert web_metric(stack, "herdless_near_cache_total", result="hit") - hits_before >= 998


def test_readers_arriving_while_a_cold_key_is_refreshed_join_the_waiters_without_reading_redis(
    stack: Stack,
) -> None:
    # 100 reads, one every 5 ms over both web processes, of a key whose refresh takes a second:
    # after the first readers of each process found no value and wait, the rest join them
    # without a read of their own, and one publish answers them all.
    key = "cold-joiners"
    stack.origin_config(latency_ms=1000)
    seen, thread = _watch_redis_commands(stack, EntryKeys.of("nc", key).entry)
    answers: list[requests.Response] = []
    try:
        readers = []
        for _ in range(100):
            reader = threading.Thread(target=lambda: answers.append(_fresh_connection_get(stack, key)))
            reader.start()
            readers.append(reader)
            time.sleep(0.005)
        for reader in readers:
            reader.join(15)
    finally:
        stack.origin_config(latency_ms=50)
        stack.redis.client().get(SENTINEL)
        thread.join(5)
    assert len(answers) == 100 and {r.status_code for r in answers} == {200}
    # All arrived while the value was being computed (a reader starting after it landed, on a
    # slow machine, would read it: HIT); one refresh answered them all.
    assert {r.headers["X-Cache"] for r in answers} <= {"MISS", "HIT"}
    assert sum(r.headers["X-Cache"] == "MISS" for r in answers) >= 90
    assert {r.json()["count"] for r in answers} == {1}
    reads = [c for c in seen if c.startswith("EVALSHA")]
    # Without joining, every request read Redis: 100 reads. Now a few per process (the readers
    # that arrived together first, and the one read each process makes when the refresh lands),
    # plus the refresh's own write.
    assert len(reads) <= 20, len(reads)


@dataclass
class Seen:
    started: float
    count: int
    x_cache: str


class Readers:
    """Threads reading one key over fresh connections (both web processes), recording each answer."""

    def __init__(self, stack: Stack, key: str, threads: int = 4) -> None:
        self.stack, self.key = stack, key
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            r = _fresh_connection_get(self.stack, self.key)
            count = r.json().get("count", -1) if r.status_code == 200 else -1
            self.seen.append(Seen(started, count, r.headers.get("X-Cache", "")))

    def __enter__(self) -> Readers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def _both_processes_hold(stack: Stack, key: str) -> None:
    for _ in range(40):
        assert _fresh_connection_get(stack, key).status_code == 200


def test_a_hard_purge_reaches_every_web_process_within_the_bound(stack: Stack) -> None:
    key = "purged-while-read"
    _fresh_connection_get(stack, key)
    _both_processes_hold(stack, key)
    with Readers(stack, key) as readers:
        wait_until(lambda: len(readers.seen) > 50, 10, "reads before the purge")
        r = requests.delete(stack.url("nc", key), headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
        assert r.status_code == 204
        purged = time.monotonic()
        wait_until(lambda: any(s.started > purged + 1 for s in readers.seen), 10, "reads after the purge")
    late = [s for s in readers.seen if s.started > purged + COHERENCE_MS / 1000]
    assert late and all(s.count != 1 for s in late), [s for s in late if s.count == 1][:3]


def test_a_soft_purge_reaches_every_web_process_within_the_bound(stack: Stack) -> None:
    key = "soft-purged-while-read"
    _fresh_connection_get(stack, key)
    _both_processes_hold(stack, key)
    with Readers(stack, key) as readers:
        wait_until(lambda: len(readers.seen) > 50, 10, "reads before the soft purge")
        r = requests.delete(stack.url("nc", key) + "?soft=1", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
        assert r.status_code == 204
        purged = time.monotonic()
        wait_until(lambda: any(s.started > purged + 1 for s in readers.seen), 10, "reads after the soft purge")
    late = [s for s in readers.seen if s.started > purged + COHERENCE_MS / 1000]
    # The old value may be served only as STALE (while its refresh runs), never as a fresh HIT.
    assert late and not [s for s in late if s.count == 1 and s.x_cache == "HIT"]


def test_a_new_value_is_served_by_every_web_process_within_the_bound(stack: Stack) -> None:
    key = "rewritten-while-read"
    _fresh_connection_get(stack, key)
    _both_processes_hold(stack, key)
    with Readers(stack, key) as readers:
        wait_until(lambda: len(readers.seen) > 50, 10, "reads before the refresh")
        r = requests.post(stack.url("nc", key) + "/refresh", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
        assert r.status_code == 202 and r.json()["enqueued"] is True
        first_new = wait_until(
            lambda: min((s.started for s in readers.seen if s.count == 2), default=None), 10, "the new value"
        )
        wait_until(lambda: any(s.started > first_new + 1 for s in readers.seen), 10, "reads after the write")
    # The first read to see the new value started after the write; reads X ms after that see it too.
    late = [s for s in readers.seen if s.started > first_new + COHERENCE_MS / 1000]
    assert late and all(s.count == 2 for s in late), [s for s in late if s.count != 2][:3]


def test_a_write_missed_while_the_subscription_was_down_is_never_hidden_by_the_near_cache(stack: Stack) -> None:
    key = "subscription-killed"
    _fresh_connection_get(stack, key)
    _both_processes_hold(stack, key)
    redis = stack.redis.client()

    def subscribers() -> set[int]:
        return {int(c["id"]) for c in redis.client_list(_type="pubsub") if c.get("name") == SUBSCRIBER_NAME}

    killed = subscribers()
    assert len(killed) == 2  # one subscription per gunicorn process
    entry = EntryKeys.of("nc", key).entry
    # Change the stored value behind every near-cache's back (no invalidation is published),
    # in the same instant as the subscriptions are killed.
    pipe = redis.pipeline(transaction=True)
    pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    pipe.hset(entry, "v", b'{"count": 99}')
    pipe.execute()
    # A process flushes its near-cache when it loses the subscription and serves nothing from
    # it until it has resubscribed: once both are back, no read can see the old value.
    wait_until(lambda: len(subscribers() - killed) == 2, 10, "both web processes to resubscribe")
    for _ in range(40):
        r = _fresh_connection_get(stack, key)
        assert r.json()["count"] == 99, r.text


def test_the_near_cache_never_holds_more_than_its_budget(tmp_path: Path) -> None:
    budget = 4096
    env = {
        "WEB_CONCURRENCY": "1",
        "NEAR_CACHE_MAX_BYTES": str(budget),
        "ORIGIN_LATENCY_MS": "5",
    }
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        stack.origin_config(body_bytes=3000)  # one value fits; two do not
        for i in range(20):
            for _ in range(3):
                assert stack.get("nc", f"big-{i}").status_code == 200
            assert web_metric(stack, "herdless_near_cache_bytes") <= budget
        assert web_metric(stack, "herdless_near_cache_total", result="hit") > 0
        stack.origin_config(body_bytes=budget * 2)  # larger than the whole budget: never kept
        for _ in range(5):
            assert stack.get("nc", "too-big").status_code == 200
        assert web_metric(stack, "herdless_near_cache_bytes") <= budget


def test_with_the_near_cache_off_every_read_goes_to_redis(tmp_path: Path) -> None:
    env = {"NEAR_CACHE": "false"}
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        key = "no-near-cache"
        assert stack.get("nc", key).status_code == 200
        seen, thread = _watch_redis_commands(stack, EntryKeys.of("nc", key).entry)
        try:
            for _ in range(50):
                assert stack.get("nc", key).headers["X-Cache"] == "HIT"
        finally:
            stack.redis.client().get(SENTINEL)
            thread.join(5)
        assert len([c for c in seen if c.startswith("EVALSHA")]) == 50
        assert web_metric(stack, "herdless_near_cache_total", result="hit") == 0
