"""The store at Redis's maxmemory, on a private redis-server filled up: reads still answer, write
scripts are refused whole, and a refused refresh cools its key down and wakes its waiters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared import refresh_scripts, scripts
from shared.maxmemory import RECORD_REFUSED_WRITE
from shared.namespaces import Namespace, build_namespace
from shared.origin_slots import OriginSlots
from shared.protocol import Decision, FailureCode, LeaseState, RefreshOutcome, cooldown_value, parse_marker
from shared.queuebound import ADMIT, COALESCE, CONSUMING, DEPART
from shared.refresher import Refresher
from shared.settings import Settings
from shared.store import CacheStore, Fence, make_redis
from shared.tasks import RefreshRequest
from tests.stack import RedisServer

REFUSED_WHOLE = (
    refresh_scripts.FENCED_WRITE,
    scripts.PLAIN_WRITE,
    refresh_scripts.RECORD_FAILURE,
    scripts.TAKE_LEASE,
    scripts.WARM,
    refresh_scripts.CLAIM,
    scripts.MARK_QUEUED,
    scripts.SOFT_PURGE,
    ADMIT,
    COALESCE,
)
# Run at maxmemory: they only read, release or delete, or take what may grow memory in a pcall.
RUN_AT_MAXMEMORY = (
    scripts.READ,
    refresh_scripts.FINISH,
    refresh_scripts.END_RUN,
    refresh_scripts.RENEW_LEASE,
    scripts.PURGE,
    scripts.INSPECT,
    RECORD_REFUSED_WRITE,
    DEPART,
    CONSUMING,
)


def test_every_script_that_may_grow_memory_declares_itself_refused_at_maxmemory() -> None:
    assert all(text.startswith("#!lua\n") for text in REFUSED_WHOLE)
    assert not any(text.startswith("#!") for text in RUN_AT_MAXMEMORY)


def test_the_python_cooldown_value_reads_back_as_the_lua_grammar_does() -> None:
    marker = parse_marker(cooldown_value("tok.run", FailureCode.OUT_OF_MEMORY))
    assert (marker.token, marker.cooldown, marker.running) == ("tok.run", FailureCode.OUT_OF_MEMORY, False)


@pytest.fixture(scope="module")
def full_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("maxmemory"))).start()
    yield server
    server.stop()


@pytest.fixture
def parts(full_redis: RedisServer) -> Iterator[tuple[CacheStore, Namespace, redis.Redis]]:
    client = full_redis.client()
    client.config_set("maxmemory", 0)
    client.flushall()
    settings = Settings(redis_url=full_redis.url, lease_ttl_seconds=2, cache_ttl_seconds=5, stale_ttl_seconds=60)
    ns = build_namespace("t", {"origin": "http://127.0.0.1:9/items/{key}"}, settings)
    yield CacheStore(make_redis(settings), settings), ns, client
    client.config_set("maxmemory", 0)


def fill(client: redis.Redis) -> None:
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 1_000_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        for i in range(10_000):
            client.set(f"fill:{i}", "x" * 10_000)
    # Filled, memory may drop back a little below the limit (buffers freed): hold it under.
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 200_000)


def store_value(store: CacheStore, ns: Namespace, key: str, value: bytes) -> None:
    assert store.read(ns, key, "w").won_lease
    run = store.claim(ns, key, "w")
    assert run is not None
    now = store.now_ms()
    assert store.fenced_write(ns, key, Fence(run, now, now), value=value, content_type="text/plain").written
    store.finish(ns, key, "w")


def test_at_maxmemory_a_stale_value_is_read_without_a_lease_and_a_write_is_refused_whole(
    parts: tuple[CacheStore, Namespace, redis.Redis],
) -> None:
    store, ns, client = parts
    store_value(store, ns, "k", b"old")
    store_value(store, ns, "other", b"v")
    store.soft_purge(ns, "k")  # stale now
    assert store.read(ns, "other", "t0").decision is Decision.HIT
    # A refresh of "other" is under way when Redis fills up.
    client.delete(store.keys.entry(ns.name, "other").lease)
    store.soft_purge(ns, "other")
    assert store.read(ns, "other", "task").won_lease
    run = store.claim(ns, "other", "task")
    assert run is not None
    fill(client)

    r = store.read(ns, "k", "reader")
    assert (r.decision, r.won_lease, r.lease_state, r.value) == (
        Decision.STALE,
        False,
        LeaseState.OUT_OF_MEMORY,
        b"old",
    )
    assert not client.exists(store.keys.entry(ns.name, "k").lease)
    cold = store.read(ns, "never-stored", "reader")
    assert (cold.decision, cold.won_lease, cold.lease_state) == (Decision.MISS, False, LeaseState.OUT_OF_MEMORY)

    now = store.now_ms()
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        store.fenced_write(ns, "other", Fence(run, now, now), value=b"x" * 500_000, content_type="t/p")
    assert store.read(ns, "other", "reader").value == b"v"  # the stored value, untouched

    pubsub = client.pubsub()
    pubsub.subscribe(store.keys.ready_channel)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
    store.record_refused_write(ns, "other", "task", run)
    woke = pubsub.get_message(timeout=2)
    assert woke is not None and woke["type"] == "message"
    cooling = store.read(ns, "other", "reader")
    assert (cooling.lease_state, cooling.failure) == (LeaseState.COOLDOWN, FailureCode.OUT_OF_MEMORY)
    pubsub.close()


# The client `fills_up_then_answers` fills while the origin call runs (set by the test below).
FILL_DURING_CALL: list[redis.Redis] = []


def fills_up_then_answers(key: str) -> dict[str, object]:
    """An origin callable during whose call Redis reaches its maxmemory."""
    fill(FILL_DURING_CALL[0])
    return {"key": key}


def test_a_refresh_whose_write_redis_refuses_gives_its_origin_slot_back(
    parts: tuple[CacheStore, Namespace, redis.Redis],
) -> None:
    store, _, client = parts
    settings = store.settings
    ns = build_namespace("full", {"origin": "tests.test_maxmemory:fills_up_then_answers"}, settings)
    slots = OriginSlots(store.redis, ns.origin_name, store.keys)
    refresher = Refresher(settings, {ns.name: ns}, store, slots=lambda name: slots)
    FILL_DURING_CALL[:] = [client]
    assert store.read(ns, "k", "task").won_lease
    report = refresher.run(RefreshRequest(ns.name, "k", "task", "miss", store.now_ms()))
    assert report.outcome == RefreshOutcome.OUT_OF_MEMORY
    # Not held until its lease runs out: the next refresh of the origin may have it at once.
    assert slots.in_flight() == 0
