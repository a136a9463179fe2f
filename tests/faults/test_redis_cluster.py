"""The cache on a real 3-master Redis Cluster (broker on a plain Redis): single flight still holds
and no script fails with CROSSSLOT."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests

from shared.coldwait import CONNECTED_SLICE
from tests.faults.observe import read_logs, web_metric, worker_metric
from tests.stack import RedisServer, Stack, cold_herd, free_port, stack_for, wait_until

NAMESPACES = """
[namespaces.herd]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60

[namespaces.fast]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 1
"""
ADMIN = "cluster-admin-6e5263a7e09f3a31d43a4cb9ac"
HERD = 60


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535 and port_free(port + 10000):
            return port
    raise AssertionError("no free port pair for a cluster node")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def join_cluster(nodes: list[RedisServer]) -> None:
    """Make started cluster-enabled nodes one cluster of masters (no replicas), and wait until
    every node says it is ok."""
    subprocess.run(
        ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes]]
        + ["--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    wait_until(
        lambda: all(n.client(decode_responses=True).cluster("info")["cluster_state"] == "ok" for n in nodes),
        20,
        "the cluster to be ok on every node",
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    assert shutil.which("redis-cli"), "redis-cli is not installed (make test installs redis-tools)"
    tmp = tmp_path_factory.mktemp("cluster")
    nodes: list[RedisServer] = []
    try:
        for i in range(3):
            node = RedisServer(
                tmp / f"node{i}",
                port=cluster_port(),
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{i}.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            nodes.append(node.start())
        join_cluster(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def stack(cluster: list[RedisServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cluster-stack")
    broker = RedisServer(tmp / "broker").start()
    env = {
        "REDIS_CLUSTER": "true",
        "REDIS_URL": f"redis://127.0.0.1:{cluster[1].port}/0",
        "CELERY_BROKER_URL": broker.url,
        "ORIGIN_LATENCY_MS": "150",
        "ADMIN_TOKEN": ADMIN,
        "LEASE_TTL_SECONDS": "3",
    }
    try:
        with stack_for(tmp, NAMESPACES, env, redis=broker) as s:
            yield s
    finally:
        broker.stop()


def test_a_cold_herd_on_a_cluster_costs_one_origin_call_per_key(stack: Stack, cluster: list[RedisServer]) -> None:
    keys = [f"cluster-herd-{i}" for i in range(6)]  # hash tags spread over the three masters
    results = cold_herd(stack, "herd", keys, HERD)
    assert {status for _, status, _ in results} == {200}, [r for r in results if r[1] != 200][:3]
    for key in keys:
        assert len({body for k, _, body in results if k == key}) == 1
    per_key = stack.origin_stats()["per_key"]
    assert all(per_key[k] == 1 for k in keys), per_key
    # A waiter is woken by the "ready" published through the cluster: counted as a wake-up by
    # its process's subscription, and sooner than the safety-net re-read of a live subscription.
    wakeups = web_metric(stack, "herdless_cold_wakeups_total", namespace="herd")
    t0 = time.monotonic()
    assert stack.get("herd", "woken-by-pubsub").status_code == 200
    assert time.monotonic() - t0 < CONNECTED_SLICE
    assert web_metric(stack, "herdless_cold_wakeups_total", namespace="herd") == wakeups + 1
    # The entries really live on different masters.
    holders = {n.port for n in cluster for k in keys if n.client().keys(f"hl:{{herd:{k}}}:e")}
    assert len(holders) >= 2, holders


def test_refresh_purge_and_breaker_work_on_a_cluster(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    # Hot key: XFetch / stale refreshes and fenced writes on the cluster.
    first = stack.get("fast", "hot").json()
    wait_until(lambda: stack.get("fast", "hot").json()["count"] >= first["count"] + 2, 10, "two refreshes")
    url = stack.url("herd", "admin-key")
    assert stack.get("herd", "admin-key").json()["count"] == 1
    assert requests.post(url + "/refresh", headers=auth, timeout=5).status_code == 202
    wait_until(lambda: stack.get("herd", "admin-key").json()["count"] == 2, 10, "the manual refresh")
    assert requests.delete(url + "?soft=1", headers=auth, timeout=5).status_code == 204
    assert stack.get("herd", "admin-key").headers["X-Cache"] == "STALE"
    wait_until(lambda: stack.get("herd", "admin-key").json()["count"] == 3, 10, "the refresh after a soft purge")
    assert requests.delete(url, headers=auth, timeout=5).status_code == 204
    assert stack.get("herd", "admin-key").json()["count"] == 4
    ready = requests.get(stack.web_url + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text

    # A failing origin: errors counted by the breaker kept in the cluster, stale still served.
    stack.origin_config(failure_rate=1.0)
    try:
        wait_until(
            lambda: (
                stack.get("fast", "hot").status_code == 200
                and worker_metric(stack, "herdless_origin_calls_total", outcome="error") >= 1
            ),
            10,
            "an origin error on the cluster",
        )
    finally:
        stack.origin_config(failure_rate=0.0)
    assert worker_metric(stack, "herdless_refresh_total", outcome="written") >= 4

    assert "CROSSSLOT" not in read_logs(stack)
    # herdless's own processes logged no exception (the demo origin's log may show client resets).
    ours = stack.procs["web"].output() + stack.procs["w1"].output()
    assert "Traceback" not in ours, ours[ours.find("Traceback") - 500 : ours.find("Traceback") + 2500]


def test_a_warm_up_on_a_cluster_pipelines_over_every_master(stack: Stack, cluster: list[RedisServer]) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    keys = [f"cluster-warm-{i}" for i in range(300)]
    url = f"{stack.web_url}/v1/cache/herd/warm"
    r = requests.post(url, json={"keys": keys}, headers=auth, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json() == {"enqueued": 300, "already_fresh": 0, "in_flight": 0, "cooling_down": 0, "queue_full": 0}
    wait_until(lambda: set(keys) <= set(stack.origin_stats()["per_key"]), 30, "every warmed key fetched")
    wait_until(lambda: stack.get("herd", keys[-1]).headers["X-Cache"] == "HIT", 10, "the last key stored")
    assert {stack.get("herd", k).headers["X-Cache"] for k in keys[::30]} == {"HIT"}
    again = requests.post(url, json={"keys": keys}, headers=auth, timeout=30)
    assert again.json() == {"enqueued": 0, "already_fresh": 300, "in_flight": 0, "cooling_down": 0, "queue_full": 0}
    assert all(stack.origin_stats()["per_key"][k] == 1 for k in keys)
    holders = {n.port for n in cluster if n.client().keys("hl:{herd:cluster-warm-*}:e")}
    assert len(holders) == 3, holders


def test_a_batch_read_on_a_cluster_reads_each_master_once_and_enqueues_each_miss_once(
    stack: Stack, cluster: list[RedisServer]
) -> None:
    keys = [f"cluster-batch-{i}" for i in range(60)]
    r = requests.post(f"{stack.web_url}/v1/cache/herd/batch", json={"keys": keys}, timeout=30)
    assert r.status_code == 200, r.text
    assert {e["status"] for e in r.json().values()} == {200}
    assert all(stack.origin_stats()["per_key"][k] == 1 for k in keys)
    holders = {n.port for n in cluster if n.client().keys("hl:{herd:cluster-batch-*}:e")}
    assert len(holders) == 3, holders  # the keys live on every master, and each was read and served
    # Warm now; from Redis (the web processes may not hold them yet) or memory, all are HITs.
    again = requests.post(f"{stack.web_url}/v1/cache/herd/batch", json={"keys": keys}, timeout=30).json()
    assert {e["x_cache"] for e in again.values()} == {"HIT"}
