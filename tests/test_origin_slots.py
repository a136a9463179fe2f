"""The per-origin concurrency limit against a real Redis: the cap holds, dead holders free slots,
waiters wait without hammering Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from shared.metrics import ScrapeTimeCollector
from shared.origin_slots import OriginSlots
from shared.settings import Settings
from shared.store import make_redis, new_token
from tests.stack import RedisServer, wait_until

REPO = Path(__file__).resolve().parent.parent
ORIGIN = "slots.test:8080"


@pytest.fixture
def client(settings: Settings) -> Any:  # `settings` flushes the private Redis first
    return make_redis(settings)


def test_forty_holders_never_exceed_a_limit_of_five_and_all_finish(client: Any) -> None:
    slots = OriginSlots(client, ORIGIN)
    lock = threading.Lock()
    holding, peak, finished = 0, 0, 0
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal holding, peak, finished
        token = new_token()
        try:
            assert slots.acquire(token, limit=5, ttl_ms=5_000, timeout_s=20)
            with lock:
                holding += 1
                peak = max(peak, holding)
            time.sleep(0.05)  # the origin call being limited, not synchronisation
            with lock:
                holding -= 1
            slots.release(token)
            with lock:
                finished += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors[:3]
    assert finished == 40
    assert peak == 5  # the cap was reached, and never passed
    assert slots.in_flight() == 0


def test_a_holder_that_never_releases_frees_its_slot_when_the_lease_expires(client: Any) -> None:
    slots = OriginSlots(client, ORIGIN)
    assert slots.acquire("killed-holder", limit=1, ttl_ms=200, timeout_s=0)
    assert not slots.acquire("next", limit=1, ttl_ms=5_000, timeout_s=0)
    wait_until(lambda: slots.acquire("next", limit=1, ttl_ms=5_000, timeout_s=0), 5, "the dead lease to expire")
    assert slots.in_flight() == 1
    assert not slots.renew("killed-holder", 5_000), "an expired lease must not come back"


def test_a_waiter_gets_the_slot_of_an_expired_holder_while_it_waits(client: Any) -> None:
    slots = OriginSlots(client, ORIGIN)
    assert slots.acquire("killed-holder", limit=1, ttl_ms=300, timeout_s=0)
    started = time.monotonic()
    assert slots.acquire("waiter", limit=1, ttl_ms=5_000, timeout_s=5)
    assert time.monotonic() - started < 2  # woke at the lease's expiry, not at its own timeout


def test_renew_keeps_a_slot_past_its_original_ttl(client: Any) -> None:
    slots = OriginSlots(client, ORIGIN)
    assert slots.acquire("holder", limit=1, ttl_ms=300, timeout_s=0)
    deadline = time.monotonic() + 0.9  # three times the original lease
    while time.monotonic() < deadline:
        assert slots.renew("holder", 300)
        assert not slots.acquire("other", limit=1, ttl_ms=5_000, timeout_s=0.1)
    assert slots.in_flight() == 1
    slots.release("holder")
    assert slots.acquire("other", limit=1, ttl_ms=5_000, timeout_s=0)


def test_only_the_holder_can_release_or_renew_its_slot(client: Any) -> None:
    slots = OriginSlots(client, ORIGIN)
    assert slots.acquire("holder", limit=1, ttl_ms=10_000, timeout_s=0)
    slots.release("stranger")
    assert not slots.renew("stranger", 10_000)
    assert slots.in_flight() == 1
    assert not slots.acquire("other", limit=1, ttl_ms=10_000, timeout_s=0)
    assert slots.acquire("holder", limit=1, ttl_ms=10_000, timeout_s=0), "a retried acquire keeps its slot"
    assert slots.in_flight() == 1


def test_acquire_times_out_with_false_when_every_slot_is_held(client: Any) -> None:
    slots = OriginSlots(client, ORIGIN)
    for i in range(3):
        assert slots.acquire(f"holder-{i}", limit=3, ttl_ms=10_000, timeout_s=0)
    waited_before = REGISTRY.get_sample_value("herdless_origin_slot_wait_seconds_count", {"origin": ORIGIN}) or 0
    started = time.monotonic()
    assert not slots.acquire("late", limit=3, ttl_ms=10_000, timeout_s=0.5)
    took = time.monotonic() - started
    assert 0.45 <= took < 1.5
    assert slots.in_flight() == 3
    assert REGISTRY.get_sample_value("herdless_origin_slot_wait_seconds_count", {"origin": ORIGIN}) == (
        waited_before + 1
    )


def test_a_release_wakes_a_waiter_of_another_process_promptly(client: Any, settings: Settings) -> None:
    holder = OriginSlots(client, ORIGIN)
    slots = OriginSlots(make_redis(settings), ORIGIN)  # the waiter's process
    assert holder.acquire("holder", limit=1, ttl_ms=10_000, timeout_s=0)
    got_it, waiting = threading.Event(), threading.Event()

    def wait_for_slot() -> None:
        waiting.set()
        if slots.acquire("waiter", limit=1, ttl_ms=10_000, timeout_s=10):
            got_it.set()

    thread = threading.Thread(target=wait_for_slot)
    thread.start()
    assert waiting.wait(5)
    wait_until(lambda: client.info("clients")["blocked_clients"] >= 1, 5, "the waiter to block")
    released = time.monotonic()
    holder.release("holder")
    assert got_it.wait(5)
    assert time.monotonic() - released < 0.3  # the wake-up, not the next retry slice
    thread.join(5)


def test_a_waiter_behind_its_own_process_holders_waits_without_asking_redis(client: Any) -> None:
    slots = OriginSlots(client, ORIGIN)
    assert slots.acquire("holder", limit=1, ttl_ms=10_000, timeout_s=0)
    asked: list[str] = []
    try_acquire = slots.try_acquire

    def counted(token: str, limit: int, ttl_ms: int) -> Any:
        asked.append(token)
        return try_acquire(token, limit, ttl_ms)

    slots.try_acquire = counted  # type: ignore[method-assign]
    got_it = threading.Event()
    thread = threading.Thread(target=lambda: slots.acquire("waiter", 1, 10_000, 10) and got_it.set())
    thread.start()
    assert not got_it.wait(1.2)  # two retry slices' worth of waiting: Redis asked at each slice
    asked_while_held = len(asked)
    released = time.monotonic()
    slots.release("holder")
    assert got_it.wait(5)
    assert time.monotonic() - released < 0.3  # woken by the release, not by its next slice
    thread.join(5)
    # Without the local wait it asks at every wake-up and slice: here once per slice at most.
    assert asked_while_held <= 3, asked
    assert slots.in_flight() == 1


def test_two_clients_share_one_limit(redis_server: RedisServer, settings: Settings) -> None:
    host_a = OriginSlots(make_redis(settings), ORIGIN)
    host_b = OriginSlots(make_redis(settings), ORIGIN)
    assert host_a.acquire("a1", limit=2, ttl_ms=10_000, timeout_s=0)
    assert host_b.acquire("b1", limit=2, ttl_ms=10_000, timeout_s=0)
    assert not host_a.acquire("a2", limit=2, ttl_ms=10_000, timeout_s=0)
    assert not host_b.acquire("b2", limit=2, ttl_ms=10_000, timeout_s=0)
    assert host_a.in_flight() == host_b.in_flight() == 2
    host_a.release("a1")
    assert host_b.acquire("b2", limit=2, ttl_ms=10_000, timeout_s=1)
    assert host_a.in_flight() == 2


def test_a_waiter_does_not_hammer_redis(tmp_path: Path) -> None:
    # A Redis of its own: this counts every command the server runs, and web apps other tests
    # built in this process keep heartbeats and rate flushes going to the shared one.
    server = RedisServer(tmp_path / "redis").start()
    try:
        _count_a_waiters_commands(make_redis(Settings(redis_url=server.url)))
    finally:
        server.stop()


def _count_a_waiters_commands(client: Any) -> None:
    # The holder is another process's: a waiter behind its own process's holders waits locally.
    assert OriginSlots(client, ORIGIN).acquire("holder", limit=1, ttl_ms=30_000, timeout_s=0)
    slots = OriginSlots(client, ORIGIN)
    slots.try_acquire("warm-up", limit=1, ttl_ms=30_000)  # load the script once, outside the count

    def sent_by_clients() -> int:
        stats = client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval", "blpop"))

    before_total = int(client.info("stats")["total_commands_processed"])
    before_sent = sent_by_clients()
    assert not slots.acquire("waiter", limit=1, ttl_ms=30_000, timeout_s=1.0)
    sent = sent_by_clients() - before_sent
    # Everything Redis executed, the commands inside the scripts included (minus our INFOs).
    total = int(client.info("stats")["total_commands_processed"]) - before_total - 2
    assert 2 <= sent <= 10, sent
    # Each attempt's script runs at most five commands inside Redis.
    assert total <= 6 * sent, total


def test_in_flight_is_served_as_a_scrape_time_gauge(client: Any) -> None:
    slots = OriginSlots(client, ORIGIN)
    for token in ("x", "y"):
        assert slots.acquire(token, limit=5, ttl_ms=10_000, timeout_s=0)
    collector = ScrapeTimeCollector(
        queue_depths=lambda: [("refresh", 0)],
        breaker_states=lambda: [(ORIGIN, "closed")],
        origin_in_flight=lambda: [(ORIGIN, slots.in_flight())],
    )
    families = {f.name: f for f in collector.collect()}
    [sample] = families["herdless_origin_in_flight"].samples
    assert sample.labels == {"origin": ORIGIN} and sample.value == 2
    # Callers built before the gauge existed keep working and get no such family.
    without = ScrapeTimeCollector(lambda: [], lambda: [])
    assert "herdless_origin_in_flight" not in {f.name for f in without.collect()}


GEVENT_LIMIT = """
from gevent import monkey
monkey.patch_all()
import json, sys, threading, time
import gevent
from shared.origin_slots import OriginSlots
from shared.settings import Settings
from shared.store import make_redis, new_token

slots = OriginSlots(make_redis(Settings(redis_url=sys.argv[1])), "slots.gevent:80")
lock = threading.Lock()
state = {"holding": 0, "peak": 0, "done": 0}

def work():
    token = new_token()
    assert slots.acquire(token, limit=5, ttl_ms=5000, timeout_s=20)
    with lock:
        state["holding"] += 1
        state["peak"] = max(state["peak"], state["holding"])
    gevent.sleep(0.05)
    with lock:
        state["holding"] -= 1
    slots.release(token)
    state["done"] += 1

jobs = [gevent.spawn(work) for _ in range(40)]
gevent.joinall(jobs, timeout=30)
print(json.dumps({"peak": state["peak"], "done": state["done"],
                  "errors": [repr(j.exception) for j in jobs if j.exception][:3]}))
"""


def test_the_limit_holds_under_gevent(redis_server: RedisServer, settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_LIMIT, redis_server.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"peak": 5, "done": 40, "errors": []}
