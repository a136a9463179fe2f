"""A Redis Sentinel failover under load: a primary, a replica and three sentinels on this machine;
the primary is killed while clients read, and the stack (web, worker, broker) follows the
sentinels to the promoted replica: a bounded window of 503s, no older value served after a newer
one, and a cold herd after the failover costs the origin one call per key.

The load is four closed-loop clients rather than an open-loop generator (about 500 req/s on this
machine, measured and printed; the issue asks for 300): the window and the promises do not depend
on how the load is paced."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis as redis_py

from launcher.processes import Process
from launcher.redis_server import redis_server_argv
from shared.keys import Keyspace
from tests.faults.observe import Sample, TrafficLoop
from tests.stack import RedisServer, Stack, cold_herd, free_port, port_open, wait_until

MASTER = "herdless-primary"
# The primary and replica ask for a password, the stack uses database 2: REDIS_URL's password and
# database must reach the promoted primary (the sentinels themselves have none).
PASSWORD = "sentinel-test-9c1f04e2"
DB = 2
NAMESPACES = """
[namespaces.hot]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 2
# No early refresh: the calls counted after the failover are then the refreshes one per TTL
# window allows. With XFetch's default beta, a loaded machine's long refresh durations made
# 4-5 early refreshes of a 2 s key in 3 s, a cost of the rule (issue 18), not of the failover.
strategy = "swr"

[namespaces.cold]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""
HOT_KEYS = [f"h{i}" for i in range(40)]
CLIENTS = 4
WINDOW_LIMIT_SECONDS = 15.0
AFTER_FAILOVER_SECONDS = 3.0


def sentinel_conf(port: int, primary_port: int) -> str:
    return "\n".join(
        [
            f"port {port}",
            "bind 127.0.0.1",
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2",
            f"sentinel down-after-milliseconds {MASTER} 1000",
            f"sentinel failover-timeout {MASTER} 3000",
            f"sentinel parallel-syncs {MASTER} 1",
            f"sentinel auth-pass {MASTER} {PASSWORD}",
            "",
        ]
    )


class SentinelGroup:
    """A primary, one replica of it, and three sentinels watching them, each its own process."""

    def __init__(self, tmp: Path) -> None:
        diskless = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", "--masterauth", PASSWORD]
        self.primary = RedisServer(tmp / "primary", password=PASSWORD, extra=diskless)
        self.replica = RedisServer(tmp / "replica", password=PASSWORD, extra=[*diskless, "--replicaof", "127.0.0.1"])
        self.replica.extra.append(str(self.primary.port))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[Process] = []
        self.tmp = tmp

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        wait_until(
            lambda: b"master_link_status:up" in self.replica.client().execute_command("INFO replication"),
            15,
            "the replica in sync",
        )
        for i, port in enumerate(self.sentinel_ports):
            workdir = self.tmp / f"sentinel{i}"
            workdir.mkdir(parents=True, exist_ok=True)
            conf = workdir / "sentinel.conf"  # a sentinel rewrites its config: one file each
            conf.write_text(sentinel_conf(port, self.primary.port))
            argv = [redis_server_argv(port, workdir)[0], str(conf), "--sentinel"]
            proc = Process(f"sentinel{i}", argv, {}, workdir)
            self.sentinels.append(proc)
            wait_until(lambda port=port: port_open(port), 10, f"sentinel on {port}", process=proc)
        # A failover needs the quorum and a majority to elect a leader: every sentinel must know
        # the other two and the replica before the primary is killed.
        wait_until(self._all_acquainted, 20, "the sentinels to find each other and the replica")

    def _all_acquainted(self) -> bool:
        for port in self.sentinel_ports:
            client = redis_py.Redis(port=port, socket_timeout=1)
            if len(client.sentinel_sentinels(MASTER)) < 2 or not client.sentinel_slaves(MASTER):
                return False
        return True

    def master_port(self) -> int:
        client = redis_py.Redis(port=self.sentinel_ports[0], socket_timeout=1)
        return int(client.sentinel_get_master_addr_by_name(MASTER)[1])

    @property
    def env(self) -> dict[str, str]:
        return {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
            "REDIS_SENTINEL_MASTER": MASTER,
        }

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.stop(signal.SIGKILL)
        self.replica.stop()
        self.primary.stop()


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    g = SentinelGroup(tmp_path / "redis")
    try:
        g.start()
        yield g
    finally:
        g.stop()


def stack_entry_key(namespace: str, key: str) -> str:
    return Keyspace(db=DB).entry(namespace, key).entry


def served_count(sample: Sample) -> tuple[str, int]:
    body = json.loads(sample.body)
    return str(body["key"]), int(body["count"])


def resurrections(samples: list[Sample]) -> list[tuple[str, int, int]]:
    """(key, count served, newer count served before it): an older origin answer coming back."""
    newest: dict[str, int] = {}
    found = []
    for s in sorted(samples, key=lambda s: s.at + s.elapsed):
        if s.status != 200:
            continue
        key, count = served_count(s)
        if count < newest.get(key, 0):
            found.append((key, count, newest[key]))
        newest[key] = max(count, newest.get(key, 0))
    return found


def test_a_sentinel_failover_under_load_keeps_every_promise_with_a_bounded_503_window(
    tmp_path: Path, group: SentinelGroup
) -> None:
    namespaces = tmp_path / "namespaces.toml"
    namespaces.write_text(NAMESPACES)
    env = {
        "NAMESPACES_FILE": str(namespaces),
        "NEAR_CACHE": "false",  # every read goes to Redis: the window is Redis's, not hidden by memory
        "ORIGIN_LATENCY_MS": "20",
        "LEASE_TTL_SECONDS": "2",
        **group.env,
    }
    # The stack's REDIS_URL names the primary (its host and port are unused with sentinels): the
    # code before sentinel support kept talking to it, and could not serve after it died.
    stack = Stack(tmp_path / "stack", env=env, redis=group.primary, db=DB)
    with stack, ExitStack() as loops:
        urls = [stack.url("hot", k) for k in HOT_KEYS]
        for k in HOT_KEYS:
            assert stack.get("hot", k).status_code == 200
        traffic = [loops.enter_context(TrafficLoop(urls[i::CLIENTS], timeout=5, pause=0.005)) for i in range(CLIENTS)]

        def samples(since: float = 0.0) -> list[Sample]:
            return [s for t in traffic for s in t.since(since)]

        wait_until(lambda: len(samples()) >= 200, 15, "traffic before the failover")
        before = samples()
        assert all(s.status == 200 for s in before), [s.status for s in before if s.status != 200][:5]
        start = min(s.at for s in before)
        rate_before = len(before) / (time.monotonic() - start)

        killed_at = time.monotonic()
        old_port = group.primary.port
        group.primary.stop()  # SIGKILL
        wait_until(lambda: group.master_port() != old_port, 20, "the sentinels to promote the replica")
        promoted_at = time.monotonic()

        def served_again() -> bool:
            recent = samples(time.monotonic() - 1.0)
            return len(recent) >= 20 and all(s.status == 200 for s in recent)

        wait_until(served_again, WINDOW_LIMIT_SECONDS + 5, "a second of traffic all served after the failover")
        steady_from = time.monotonic()
        counts_at_steady = stack.origin_stats()["per_key"]
        wait_until(lambda: time.monotonic() - steady_from >= AFTER_FAILOVER_SECONDS, 10, "traffic after the failover")
        counts_after = stack.origin_stats()["per_key"]
        steady_for = time.monotonic() - steady_from  # on a busy machine, past AFTER_FAILOVER_SECONDS

        # A cold herd on never-seen keys, after the failover: the worker and the broker follow too.
        cold_keys = [f"c{i}" for i in range(10)]
        herd = cold_herd(stack, "cold", cold_keys, 40)
        calls = stack.origin_stats()["per_key"]
        # The values live in REDIS_URL's database on the promoted replica, reached with its password.
        assert group.replica.client(db=DB).exists(stack_entry_key("cold", cold_keys[0]))
        loops.close()  # the clients stop before the stack does
        stack.stop(kill_workers=True)

    all_samples = samples()
    failed = [s for s in all_samples if s.at >= killed_at and s.status != 200]
    window = max((s.at + s.elapsed for s in failed), default=killed_at) - killed_at
    print(
        f"\nsentinel failover: {rate_before:.0f} req/s before; promoted {promoted_at - killed_at:.2f} s after the"
        f" kill; 503 window {window:.2f} s ({len(failed)} answers not 200 of {len(samples(killed_at))})"
    )
    assert window < WINDOW_LIMIT_SECONDS, window
    for s in failed:  # every refusal a JSON 503, never a 500 or a hang
        assert s.status == 503 and s.headers["Content-Type"].startswith("application/json"), (s.status, s.body[:80])
    assert resurrections(all_samples) == []
    # The hot keys refresh every 2 s: over the steady seconds after the failover, one refresh per
    # key per TTL window (and one in flight), never a herd.
    over = {k: counts_after[k] - counts_at_steady.get(k, 0) for k in HOT_KEYS}
    worst = max(over.values())
    assert worst <= steady_for / 2 + 2, (worst, round(steady_for, 2), sorted(over.items(), key=lambda kv: -kv[1])[:5])
    assert all(status == 200 for _, status, _ in herd), [status for _, status, _ in herd if status != 200][:5]
    assert {k: calls[k] for k in cold_keys} == dict.fromkeys(cold_keys, 1)
