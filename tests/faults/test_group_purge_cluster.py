"""A tag purge of 100 000 keys on a real 3-master Redis Cluster, through the web tier: no command
over 10 ms in any node's SLOWLOG, reads of other keys meanwhile at p99 <= 25 ms, progress as a
metric, every key purged. Also a small tag purge racing a first fill on the cluster."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from redis.cluster import RedisCluster

from shared.keys import DEFAULT_KEYSPACE
from shared.namespaces import build_namespace
from shared.settings import Settings
from shared.store import CacheStore, make_redis, new_token
from shared.tags import member
from tests.faults.observe import web_metric
from tests.faults.test_redis_cluster import cluster_port, join_cluster
from tests.stack import RedisServer, Stack, stack_for, wait_until

ADMIN = "group-cluster-admin-7a0c2e4f6b8d1e3a5c"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
NAMESPACES = """
[namespaces.bulk]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 600

[namespaces.reads]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 600
"""
KEYS = 100_000
SLOW_US = 10_000  # 10 ms
READ_P99_S = 0.025
HTTP_P99_S = 0.5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Three masters of its own, no replicas, at a raised CPU priority; every command over 1 ms
    goes to the SLOWLOG."""
    assert shutil.which("redis-cli"), "redis-cli is not installed (make test installs redis-tools)"
    tmp = tmp_path_factory.mktemp("group-cluster")
    nodes: list[RedisServer] = []
    try:
        for i in range(3):
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{i}.conf"]
            extra += ["--cluster-node-timeout", "2000", "--slowlog-log-slower-than", "1000"]
            extra += ["--slowlog-max-len", "4096"]
            node = RedisServer(tmp / f"node{i}", port=cluster_port(), extra=extra).start()
            nodes.append(node)
            # The machine runs many test suites at once (load average ~20 on 2 cores): a node
            # descheduled mid-command logs a GET of 10 ms. Its priority keeps the SLOWLOG about
            # what the commands cost, not about who else had the CPU.
            assert node.process is not None
            os.setpriority(os.PRIO_PROCESS, node.process.popen.pid, -10)
        join_cluster(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def stack(cluster: list[RedisServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("group-cluster-stack")
    broker = RedisServer(tmp / "broker").start()
    env = {
        "REDIS_CLUSTER": "true",
        "REDIS_URL": f"redis://127.0.0.1:{cluster[0].port}/0",
        "CELERY_BROKER_URL": broker.url,
        "ADMIN_TOKEN": ADMIN,
        "ORIGIN_LATENCY_MS": "20",
        "NEAR_CACHE": "false",  # every read below goes to Redis: it is what the purge could slow
    }
    try:
        with stack_for(tmp, NAMESPACES, env, redis=broker) as s:
            yield s
    finally:
        broker.stop()


def store_tagged_values(client: RedisCluster, n: int, tag: str) -> None:
    """n values of namespace bulk carrying `tag`, as fenced writes leave them, and the tag's
    index, written in pipelines (a refresh each would take minutes)."""
    now = int(time.time() * 1000)
    life = 600_000
    group = DEFAULT_KEYSPACE.tag_group(tag)
    for start in range(0, n, 5000):
        pipe = client.pipeline(transaction=False)
        members = {}
        for i in range(start, min(n, start + 5000)):
            key = f"k{i}"
            entry = DEFAULT_KEYSPACE.entry("bulk", key).entry
            fields = {"v": "{}", "ct": "application/json", "etag": '"e"', "at": now, "soft": now + life, "d": 10}
            pipe.hset(entry, mapping={**fields, "u": 0.5, "neg": 0, "tg": tag, "ttl": life, "st": 0, "sie": 0})
            pipe.pexpire(entry, life)
            members[member("bulk", key)] = now + life
        pipe.execute()
        client.zadd(group.members, members)
    client.pexpire(group.members, life)


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) >= 100 else max(samples)


class Readers:
    """Reads of warm keys while the test runs: over HTTP (web tier, near-cache off: each one a
    Redis READ) and straight to Redis (the READ script), each latency kept per phase."""

    def __init__(self, stack: Stack, cluster: list[RedisServer], keys: list[str]) -> None:
        self.stack, self.keys = stack, keys
        settings = Settings(redis_url=f"redis://127.0.0.1:{cluster[0].port}/0", redis_cluster=True)
        self.store = CacheStore(make_redis(settings), settings)
        self.ns = build_namespace(
            "reads", {"origin": "http://127.0.0.1:9/items/{key}", "cache_ttl_seconds": 600}, settings
        )
        self.http: list[float] = []
        self.redis: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._http) for _ in range(2)] + [threading.Thread(target=self._redis)]

    def _http(self) -> None:
        session, i = requests.Session(), 0
        while not self.stop.is_set():
            t0 = time.perf_counter()
            r = session.get(self.stack.url("reads", self.keys[i % len(self.keys)]), timeout=10)
            self.http.append(time.perf_counter() - t0)
            if r.status_code != 200 or r.headers.get("X-Cache") != "HIT":
                self.failures.append(f"{r.status_code} {r.text[:100]}")
            i += 1

    def _redis(self) -> None:
        i = 0
        while not self.stop.is_set():
            t0 = time.perf_counter()
            assert self.store.read(self.ns, self.keys[i % len(self.keys)], new_token()).decision == "HIT"
            self.redis.append(time.perf_counter() - t0)
            i += 1
            time.sleep(0.002)

    def __enter__(self) -> Readers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def slowlog(cluster: list[RedisServer]) -> tuple[int, dict[str, int]]:
    """The slowest command of any node since the last reset (us), and the slowest per command."""
    by_command: dict[str, int] = {}
    for node in cluster:
        for entry in node.client().slowlog_get(4096):
            name = bytes(entry["command"]).split(b" ")[0].decode()
            by_command[name] = max(by_command.get(name, 0), entry["duration"])
        node.client().slowlog_reset()
    return max(by_command.values(), default=0), by_command


def test_a_100k_key_tag_purge_on_a_cluster_never_blocks_redis(stack: Stack, cluster: list[RedisServer]) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    store_tagged_values(client, KEYS, "bulk-tag")
    reads = [f"r{i}" for i in range(50)]
    for key in reads:
        assert stack.get("reads", key).status_code == 200
    pending_seen: list[float] = []
    with Readers(stack, cluster, reads) as readers:
        # The same reads before the purge, as the baseline of this machine at this moment.
        slowlog(cluster)
        time.sleep(5.0)
        worst_before, _ = slowlog(cluster)
        http_before, redis_before = len(readers.http), len(readers.redis)
        done = threading.Event()

        def progress() -> None:
            while not done.is_set():
                pending_seen.append(web_metric(stack, "herdless_group_purge_pending_keys"))
                time.sleep(0.2)

        watcher = threading.Thread(target=progress)
        watcher.start()
        t0 = time.monotonic()
        try:
            r = requests.post(stack.web_url + "/v1/purge", json={"tags": ["bulk-tag"]}, headers=AUTH, timeout=280)
        finally:
            done.set()
            watcher.join()
        took = time.monotonic() - t0
        worst, by_command = slowlog(cluster)
        http_during, redis_during = readers.http[http_before:], readers.redis[redis_before:]
        http_base, redis_base = readers.http[:http_before], readers.redis[:redis_before]
    assert r.status_code == 200, r.text
    assert not readers.failures, readers.failures[:5]
    assert r.json()["purged"] == KEYS and r.json()["keys"]["hard"] == KEYS, r.json()
    assert sum(client.exists(DEFAULT_KEYSPACE.entry("bulk", f"k{i}").entry) for i in range(0, KEYS, 997)) == 0
    sys.stderr.write(
        f"\n100k-key tag purge on a 3-master cluster: {took:.1f} s; slowest command {worst} us during it "
        f"({by_command}), {worst_before} us in the 5 s of reads before it; READ straight to Redis: p99 "
        f"{_p99(redis_during) * 1000:.1f} ms during ({len(redis_during)}), {_p99(redis_base) * 1000:.1f} ms before; "
        f"HTTP reads: p50 {statistics.median(http_during) * 1000:.1f} / p99 {_p99(http_during) * 1000:.1f} ms "
        f"during ({len(http_during)}), p50 {statistics.median(http_base) * 1000:.1f} / p99 "
        f"{_p99(http_base) * 1000:.1f} ms before; load average {os.getloadavg()[0]:.1f}\n"
    )
    # A node descheduled mid-command (other suites share the CPU) logs even TIME or GET slow: a
    # purge command may take as long as the node's slowest O(1) command then, and no longer.
    purge_worst = max(by_command.get("EVALSHA", 0), by_command.get("ZSCAN", 0))
    trivial_worst = max((by_command.get(c, 0) for c in ("TIME", "GET", "EXISTS", "HGET", "SET", "DEL")), default=0)
    assert purge_worst < max(SLOW_US, 2 * trivial_worst), by_command
    # Redis itself is never held: its reads stay quick while the purge runs.
    assert _p99(redis_during) <= READ_P99_S, f"READ p99 during the purge: {_p99(redis_during) * 1000:.1f} ms"
    # Through the web tier the purge competes for the CPU (it runs in a web process: on this
    # machine, shared by other suites, HTTP p99 went from ~50 ms to ~120 ms): no read is refused
    # (none above: the process's event loop never ran a second late) and none stalls.
    assert _p99(http_during) <= HTTP_P99_S, f"HTTP reads' p99 during the purge: {_p99(http_during) * 1000:.0f} ms"
    # Progress was visible while it ran, and is back to 0.
    assert any(0 < p < KEYS for p in pending_seen), sorted(set(pending_seen))[:10]
    assert web_metric(stack, "herdless_group_purge_pending_keys") == 0
    assert web_metric(stack, "herdless_group_purge_keys_total", kind="tag", outcome="hard") >= KEYS


def test_a_tag_purge_racing_a_first_fill_on_a_cluster_refuses_its_value(stack: Stack) -> None:
    stack.origin_config(latency_ms=2000, surrogate_key="item-{key}")
    answers: list[requests.Response] = []
    reader = threading.Thread(target=lambda: answers.append(stack.get("bulk", "first", timeout=30)))
    reader.start()
    try:
        wait_until(lambda: stack.origin_stats()["per_key"].get("first", 0) == 1, 10, "the first fill's call")
        stack.origin_config(latency_ms=20)
        r = requests.post(stack.web_url + "/v1/purge", json={"tags": ["item-first"]}, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        reader.join()
    assert answers[0].status_code == 200 and answers[0].json()["count"] == 2, answers[0].text
    assert stack.get("bulk", "first").json()["count"] == 2
