"""Pipelined scripts on a real 3-master Redis Cluster cost one round trip per node, as on one Redis:
redis-py's cluster pipeline asks a node for an EVALSHA's keys (COMMAND GETKEYS, a round trip per
call) unless told the node, so a batch read, a warm-up and a refresh run's claim and write tell it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from shared.namespaces import Namespace, build_namespace
from shared.origin_slots import OriginSlots
from shared.queuebound import QueueBound
from shared.settings import Settings
from shared.store import CacheStore, Fence, make_redis, new_token
from tests.faults.test_redis_cluster import cluster_port, join_cluster
from tests.stack import RedisServer

KEYS = 200


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    assert shutil.which("redis-cli"), "redis-cli is not installed (make test installs redis-tools)"
    tmp = tmp_path_factory.mktemp("round-trips")
    started: list[RedisServer] = []
    try:
        for i in range(3):
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{i}.conf"]
            started.append(RedisServer(tmp / f"node{i}", port=cluster_port(), extra=extra).start())
        join_cluster(started)
        yield started
    finally:
        for node in started:
            node.stop()


@pytest.fixture
def on_cluster(nodes: list[RedisServer]) -> tuple[CacheStore, Namespace]:
    settings = Settings(redis_url=f"redis://127.0.0.1:{nodes[0].port}", redis_cluster=True, lease_ttl_seconds=5)
    store = CacheStore(make_redis(settings), settings)
    store.redis.flushall()
    return store, build_namespace("t", {"origin": "http://127.0.0.1:9/items/{key}"}, settings)


def key_lookups(nodes: list[RedisServer]) -> int:
    """COMMAND GETKEYS calls so far, over every node."""
    stats = [n.client(decode_responses=True).info("commandstats") for n in nodes]
    return sum(s.get("cmdstat_command|getkeys", {}).get("calls", 0) for s in stats)


def test_a_batch_read_and_a_warm_up_ask_no_node_for_their_keys(
    nodes: list[RedisServer], on_cluster: tuple[CacheStore, Namespace]
) -> None:
    store, ns = on_cluster
    store.read(ns, "first", new_token())  # scripts loaded, slots known
    before = key_lookups(nodes)
    reads = store.read_many(ns, {f"k{i}": new_token() for i in range(KEYS)})
    assert sum(r.won_lease for r in reads.values()) == KEYS
    states, _ = store.warm(ns, {f"w{i}": new_token() for i in range(KEYS)})
    assert len(states) == KEYS
    assert key_lookups(nodes) == before


def test_a_refresh_runs_claim_and_write_ask_no_node_for_their_keys(
    nodes: list[RedisServer], on_cluster: tuple[CacheStore, Namespace]
) -> None:
    store, ns = on_cluster
    queue = QueueBound(store, store.settings)
    slots = OriginSlots(store.redis, ns.origin_name, store.keys)
    token = new_token()
    assert store.read(ns, "k", token).won_lease
    queue.admit(ns.name, "k", token)
    before = key_lookups(nodes)
    claimed, departed = store.claim_run(ns, "k", token, before=queue.depart_call(ns.name, "k", token, taken=True))
    assert claimed is not None and departed == 1
    assert slots.acquire(claimed.run_token, 1, 10_000, 0)
    fence = Fence(claimed.run_token, store.now_ms(), store.now_ms(), slots.release_call(claimed.run_token))
    assert store.fenced_write(ns, "k", fence, value=b"v", content_type="text/plain").written
    assert slots.in_flight() == 0
    assert key_lookups(nodes) == before
