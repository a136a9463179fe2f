"""ColdWaitHub against a real Redis: per-key wake-ups, one shared re-read, near-cache invalidation and bypass."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from shared.channels import HandedOver, publish_invalidation, ready_message
from shared.coldwait import ColdWaitHub, TooManyWaiters
from shared.keys import DEFAULT_KEYSPACE
from shared.nearcache import NearCache
from shared.protocol import ReadyStatus
from tests.stack import RedisServer, wait_until


def publish_ready(client: redis.Redis, ns: str, key: str, status: str) -> None:
    """What a refresh script publishes once it has written or recorded a failure."""
    client.publish(DEFAULT_KEYSPACE.ready_channel, ready_message(ns, key, ReadyStatus(status)))


@dataclass(frozen=True)
class Entry:
    value: bytes


class Gate:
    """A client factory for the hub that can refuse to connect, to hold the subscription down."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.open = threading.Event()
        self.open.set()

    def __call__(self) -> redis.Redis:
        if not self.open.is_set():
            raise redis.ConnectionError("gate closed by the test")
        return redis.Redis.from_url(self.url)


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def ns() -> str:
    return "ns-" + uuid.uuid4().hex[:8]  # channels are server-wide: keep tests apart


@pytest.fixture
def make_hub(redis_server: RedisServer) -> Iterator[Callable[..., ColdWaitHub]]:
    hubs: list[ColdWaitHub] = []

    def make(*, factory: Callable[[], Any] | None = None, **kwargs: Any) -> ColdWaitHub:
        kwargs.setdefault("max_waiters", 10_000)
        hub = ColdWaitHub(factory or (lambda: redis.Redis.from_url(redis_server.url)), **kwargs)
        hub.start()
        assert hub.connected.wait(10), "hub did not subscribe"
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.stop()


def near_cache_count(result: str) -> float:
    return REGISTRY.get_sample_value("herdless_near_cache_total", {"result": result}) or 0.0


def put_fresh(nc: NearCache[Entry], ns: str, key: str, value: bytes) -> bool:
    token = nc.begin_read(ns, key)
    return nc.put(ns, key, Entry(value), int(token.host_ms), token.host_ms + 60_000, token)


def run_threads(targets: list[Callable[[], None]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    return threads


def test_a_publish_wakes_only_the_waiters_of_its_key(
    make_hub: Callable[..., ColdWaitHub], client: redis.Redis, ns: str
) -> None:
    hub = make_hub(connected_slice=30.0)
    keys = [f"k{i}" for i in range(500)]
    marked = threading.Semaphore(0)
    stop = threading.Event()
    woken: list[tuple[str, str]] = []
    woken_lock = threading.Lock()

    def waiter(key: str) -> Callable[[], None]:
        def run() -> None:
            with hub.join(ns, key) as handle:
                handle.mark()
                marked.release()
                while not stop.is_set():
                    status = handle.wait(0.5)
                    if status is not None:
                        with woken_lock:
                            woken.append((key, status))
                        return

        return run

    threads = run_threads([waiter(k) for k in keys])
    for _ in keys:
        assert marked.acquire(timeout=30)
    assert hub.active == 500
    wakeups = hub.wakeups

    publish_ready(client, ns, "k123", "ready")
    wait_until(lambda: woken, 10, "k123's waiter to wake")

    assert woken == [("k123", "ready")]
    assert hub.wakeups == wakeups + 1  # one key's wait signalled, no other touched
    assert hub.waiting_on(ns, "k123") == 0
    assert all(hub.waiting_on(ns, k) == 1 for k in keys if k != "k123")
    publish_ready(client, ns, "k7", "error")
    wait_until(lambda: len(woken) == 2, 10, "k7's waiter to wake")
    assert woken[1] == ("k7", "error")
    stop.set()
    for t in threads:
        t.join(10)
    assert hub.active == 0


def test_one_publish_costs_one_shared_read_for_all_200_waiters_of_a_key(
    make_hub: Callable[..., ColdWaitHub], client: redis.Redis, ns: str
) -> None:
    hub = make_hub(connected_slice=30.0)
    client.set(f"{ns}:value", b"computed")
    calls = 0
    calls_lock = threading.Lock()

    def read() -> bytes | None:
        nonlocal calls
        with calls_lock:
            calls += 1
        return client.get(f"{ns}:value")

    marked = threading.Semaphore(0)
    results: list[tuple[str | None, bytes | None, bool]] = []
    results_lock = threading.Lock()

    def waiter() -> None:
        with hub.join(ns, "hot") as handle:
            handle.mark()
            marked.release()
            status = None
            while status is None:
                status = handle.wait(30)
            value = handle.shared_read(read, timeout=10)
            with results_lock:
                results.append((status, value, handle.ran_last_read))

    threads = run_threads([waiter for _ in range(200)])
    for _ in range(200):
        assert marked.acquire(timeout=30)
    publish_ready(client, ns, "hot", "ready")
    for t in threads:
        t.join(30)

    assert calls == 1
    assert len(results) == 200
    assert {(status, value) for status, value, _ in results} == {("ready", b"computed")}
    assert sum(ran for _, _, ran in results) == 1


def test_a_shared_read_failure_reaches_every_sharer_and_the_next_read_runs_again(
    make_hub: Callable[..., ColdWaitHub], ns: str
) -> None:
    hub = make_hub(connected_slice=30.0)
    calls = 0
    calls_lock = threading.Lock()

    def failing_read() -> bytes:
        nonlocal calls
        with calls_lock:
            calls += 1
        raise redis.ConnectionError("redis blinked")

    all_joined = threading.Barrier(10, timeout=10)
    all_read_once = threading.Barrier(10, timeout=10)
    errors: list[BaseException] = []
    seconds: list[bytes] = []

    def reader() -> None:
        with hub.join(ns, "k") as handle:
            all_joined.wait()
            try:
                handle.shared_read(failing_read, timeout=10)
            except redis.ConnectionError as exc:
                errors.append(exc)
            all_read_once.wait()
            # A later re-read (the safety-net period) is a new read, not the old failure.
            seconds.append(handle.shared_read(lambda: b"second", timeout=10))

    for t in run_threads([reader for _ in range(10)]):
        t.join(10)
    assert calls == 1
    assert len(errors) == 10 and len({id(e) for e in errors}) == 1
    assert seconds == [b"second"] * 10


def test_a_read_begun_before_a_waiter_joined_is_not_shared_with_it(
    make_hub: Callable[..., ColdWaitHub], ns: str
) -> None:
    hub = make_hub(connected_slice=30.0)
    with hub.join(ns, "k") as early:
        assert early.shared_read(lambda: "old") == "old"
        with hub.join(ns, "k") as late:
            assert late.coalesced
            assert late.shared_read(lambda: "fresh") == "fresh"
            assert late.ran_last_read


def test_a_publish_between_mark_and_wait_is_not_lost(
    make_hub: Callable[..., ColdWaitHub], client: redis.Redis, ns: str
) -> None:
    hub = make_hub(connected_slice=30.0)
    with hub.join(ns, "k") as handle:
        handle.mark()
        wakeups = hub.wakeups
        publish_ready(client, ns, "k", "ready")  # lands while "we are re-reading"
        wait_until(lambda: hub.wakeups > wakeups, 10, "the hub to see the publish")
        started = time.monotonic()
        assert handle.wait(5) == "ready"
        assert time.monotonic() - started < 1.0
        assert handle.wait(0.05) is None  # consumed: the same publish does not wake twice


def test_waiters_past_the_limit_are_refused_and_joiners_of_a_waited_key_are_coalesced(
    make_hub: Callable[..., ColdWaitHub], ns: str
) -> None:
    hub = make_hub(max_waiters=2)
    with hub.join(ns, "k") as first, hub.join(ns, "k") as second:
        assert not first.coalesced and second.coalesced
        with pytest.raises(TooManyWaiters):
            with hub.join(ns, "other"):
                pass
    assert hub.active == 0 and hub.waiting_on(ns, "k") == 0


def test_an_invalidation_published_on_redis_drops_the_key_from_the_near_cache(
    make_hub: Callable[..., ColdWaitHub], client: redis.Redis, ns: str
) -> None:
    nc: NearCache[Entry] = NearCache(1 << 20)
    make_hub(nearcache=nc)
    assert nc.enabled  # resumed by the subscribe handshake
    for key in ("a", "b", "c"):
        assert put_fresh(nc, ns, key, b"v")

    publish_invalidation(client, ns, "a")
    wait_until(lambda: nc.get(ns, "a") is None, 5, "the invalidation to drop a")
    publish_ready(client, ns, "b", "ready")  # a refresh wrote b: also drops it
    wait_until(lambda: nc.get(ns, "b") is None, 5, "the ready message to drop b")
    assert nc.get(ns, "c") is not None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server: purges count the hubs registered in their database, and in-process
    apps of other test modules keep hubs registered on the session's server."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_a_purge_returns_only_after_every_subscribed_process_dropped_the_key(
    own_redis: RedisServer, make_hub: Callable[..., ColdWaitHub], ns: str
) -> None:
    # Before, a purge answered as soon as it had published: another web process could still
    # serve the purged value from memory to the purger's next read.
    client = own_redis.client()
    caches: list[NearCache[Entry]] = [NearCache(1 << 20) for _ in range(3)]
    for nc in caches:
        make_hub(nearcache=nc, factory=own_redis.client, ack_client=own_redis.client())
        assert put_fresh(nc, ns, "k", b"old")
    told, confirmed = publish_invalidation(client, ns, "k", ack_timeout=5)
    assert (told, confirmed) == (3, 3)
    assert all(nc.get(ns, "k") is None for nc in caches)  # at once: no waiting here
    assert not client.keys("hl:inval-ack:*")


def test_a_purge_waits_at_most_its_bound_for_a_registered_process_that_does_not_confirm(
    own_redis: RedisServer, make_hub: Callable[..., ColdWaitHub], ns: str
) -> None:
    client = own_redis.client()
    nc: NearCache[Entry] = NearCache(1 << 20)
    make_hub(nearcache=nc, factory=own_redis.client, ack_client=client)
    # A process that registered and then hung (its entry has not expired yet).
    client.zadd(DEFAULT_KEYSPACE.subscribers, {"hung-process": client.time()[0] * 1000 + 60_000})
    started = time.monotonic()
    told, confirmed = publish_invalidation(client, ns, "k", ack_timeout=0.3)
    assert (told, confirmed) == (2, 1)
    assert 0.3 <= time.monotonic() - started < 3
    assert not client.keys("hl:inval-ack:*")


def test_a_hub_counts_in_purges_only_while_subscribed(
    own_redis: RedisServer, make_hub: Callable[..., ColdWaitHub], ns: str
) -> None:
    client = own_redis.client()
    hub = make_hub(nearcache=NearCache(1 << 20), factory=own_redis.client, ack_client=client)
    assert client.zcard(DEFAULT_KEYSPACE.subscribers) == 1
    hub.stop()
    assert client.zcard(DEFAULT_KEYSPACE.subscribers) == 0
    assert publish_invalidation(client, ns, "k", ack_timeout=0.3) == (0, 0)


def test_a_put_racing_an_invalidation_delivered_by_the_hub_is_refused(
    make_hub: Callable[..., ColdWaitHub], client: redis.Redis, ns: str
) -> None:
    nc: NearCache[Entry] = NearCache(1 << 20)
    make_hub(nearcache=nc)
    assert put_fresh(nc, ns, "k", b"A0")
    token = nc.begin_read(ns, "k")  # our read of A starts
    publish_invalidation(client, ns, "k")  # a write of B lands and is announced meanwhile
    wait_until(lambda: len(nc) == 0, 5, "the hub to deliver the invalidation")
    assert not nc.put(ns, "k", Entry(b"A"), int(token.host_ms), token.host_ms + 60_000, token)
    assert nc.get(ns, "k") is None


def test_a_killed_subscription_bypasses_the_near_cache_until_resubscribed(
    make_hub: Callable[..., ColdWaitHub], client: redis.Redis, redis_server: RedisServer, ns: str
) -> None:
    nc: NearCache[Entry] = NearCache(1 << 20)
    gate = Gate(redis_server.url)
    hub = make_hub(factory=gate, nearcache=nc, connected_slice=30.0)
    assert put_fresh(nc, ns, "k", b"v")
    assert nc.get(ns, "k") is not None
    subscriptions = hub.subscriptions

    gate.open.clear()
    assert client.client_kill_filter(_type="pubsub") >= 1
    wait_until(lambda: not hub.connected.is_set(), 10, "the hub to notice the kill")

    bypassed = near_cache_count("bypassed")
    assert nc.get(ns, "k") is None
    assert near_cache_count("bypassed") == bypassed + 1
    assert not put_fresh(nc, ns, "k", b"v")  # nothing is kept while invalidations may be missed
    with hub.join(ns, "cold") as handle:  # waiters fall back to the short re-read period
        started = time.monotonic()
        assert handle.wait(10) is None
        assert time.monotonic() - started < 5

    gate.open.set()
    wait_until(lambda: hub.connected.is_set(), 10, "the hub to resubscribe")
    assert hub.subscriptions == subscriptions + 1
    assert nc.enabled
    assert nc.get(ns, "k") is None  # the flush on disconnect dropped the old entry
    assert put_fresh(nc, ns, "k", b"v2")
    hit = nc.get(ns, "k")
    assert hit is not None and hit.entry.value == b"v2"
    publish_invalidation(client, ns, "k")  # and the new subscription delivers again
    wait_until(lambda: nc.get(ns, "k") is None, 5, "the invalidation on the new subscription")


def test_a_subscription_that_goes_silent_counts_as_lost(
    make_hub: Callable[..., ColdWaitHub], client: redis.Redis, ns: str
) -> None:
    nc: NearCache[Entry] = NearCache(1 << 20)
    hub = make_hub(nearcache=nc, heartbeat_seconds=0.1, liveness_seconds=0.5)
    assert put_fresh(nc, ns, "k", b"v")
    subscriptions = hub.subscriptions
    # The server stops answering for 2.5 s while the socket stays up (the pause ends by itself:
    # Redis 7.0 holds even CLIENT UNPAUSE until then).
    client.execute_command("CLIENT", "PAUSE", "2500", "ALL")
    wait_until(lambda: not hub.connected.is_set(), 2.0, "the heartbeat to declare the subscription lost")
    assert not nc.enabled and nc.get(ns, "k") is None
    wait_until(lambda: hub.connected.is_set(), 10, "the hub to resubscribe")
    assert hub.subscriptions > subscriptions and nc.enabled


def test_a_reader_learns_whether_a_refresh_was_published_between_its_read_and_its_join(
    make_hub: Callable[..., ColdWaitHub], client: redis.Redis, ns: str
) -> None:
    hub = make_hub()
    read_started = time.monotonic()
    assert not hub.ready_since(ns, "k", read_started)  # nothing published: wait without re-reading
    subscriptions = hub.subscriptions
    publish_ready(client, ns, "k", "ready")
    wait_until(lambda: hub.ready_since(ns, "k", read_started), 10, "the hub to record the publish")
    assert hub.subscriptions == subscriptions  # learnt from the live subscription, not a reconnect
    assert not hub.ready_since(ns, "k", time.monotonic())  # older than a later read: irrelevant
    assert not hub.ready_since(ns, "other", read_started)


def test_a_handed_over_answer_reaches_every_waiter_of_its_key_and_a_later_publish_clears_it(
    make_hub: Callable[..., ColdWaitHub], client: redis.Redis, ns: str
) -> None:
    hub = make_hub(connected_slice=30.0)
    body = b"\x00not stored\xff"
    with hub.join(ns, "k") as first, hub.join(ns, "k") as second:
        first.mark()
        second.mark()
        message = {"ns": ns, "key": "k", "status": "ready", "body": base64.b64encode(body).decode(), "ct": "x/y"}
        client.publish(DEFAULT_KEYSPACE.ready_channel, json.dumps(message))
        for handle in (first, second):
            assert handle.wait(5) == "ready"
            assert handle.handed_over == HandedOver(body, "x/y")
        publish_ready(client, ns, "k", "ready")  # a later refresh stored a value: nothing to hand over
        assert first.wait(5) == "ready" and first.handed_over is None


def test_a_waiter_that_finds_the_lease_free_waits_for_a_late_publish_and_leaves_it_to_wait(
    make_hub: Callable[..., ColdWaitHub], client: redis.Redis, ns: str
) -> None:
    # A refresh whose answer may not be stored frees the lease and hands the answer over in its
    # publish: a waiter re-reading in between finds no value and a free lease. It must not take
    # the refresh over (a second origin call) while that publish is still on its way.
    hub = make_hub(connected_slice=30.0)
    with hub.join(ns, "k") as handle:
        handle.mark()
        assert not handle.landed_meanwhile(0.05)  # nothing published: take over
        body = b"handed over"
        message = {"ns": ns, "key": "k", "status": "ready", "body": base64.b64encode(body).decode(), "ct": "x/y"}
        threading.Timer(0.3, lambda: client.publish(DEFAULT_KEYSPACE.ready_channel, json.dumps(message))).start()
        started = time.monotonic()
        assert handle.landed_meanwhile(5)
        assert 0.2 < time.monotonic() - started < 4
        assert handle.wait(0.05) == "ready" and handle.handed_over == HandedOver(body, "x/y")  # still there
