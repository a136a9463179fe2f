"""Redis at its maxmemory (noeviction): stored values are still served, writes are refused whole
and counted, the refused refresh's waiters wake, and nothing is written past the limit."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from shared.keys import DEFAULT_KEYSPACE
from tests.faults.observe import web_metric, worker_metric
from tests.stack import Stack, stack_for, wait_until

NAMESPACES = """
[namespaces.m]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 1
xfetch_beta = 0
"""

VALUE_BYTES = 200_000  # a refreshed value: far more than the slack Redis allows past maxmemory


def fill_to_maxmemory(client: Any) -> None:
    """Set maxmemory a little above what is used and fill Redis with keys until it refuses: then
    every command that may grow memory is refused."""
    limit = int(client.info("memory")["used_memory"]) + 2_000_000
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", limit)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        for i in range(10_000):
            client.set(f"fill:{i}", "x" * 10_000)
    # Filled, memory may drop back a little below the limit (buffers freed): hold it under.
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 200_000)


def large_keys(client: Any) -> list[bytes]:
    """Keys holding as much as half a refreshed value: where a write past the limit would be."""
    return [key for key in client.scan_iter(count=1000) if (client.memory_usage(key) or 0) > VALUE_BYTES // 2]


def test_at_maxmemory_stale_values_are_served_and_a_refused_write_wakes_its_waiters(tmp_path: Path) -> None:
    env = {"COLD_WAIT_TIMEOUT_SECONDS": "15", "STALE_TTL_SECONDS": "300"}
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        client = stack.redis.client()
        assert stack.get("m", "stored").status_code == 200

        # A cold key's refresh is under way (its origin call is slow) when Redis fills up.
        stack.origin_config(latency_ms=2000, body_bytes=VALUE_BYTES)
        cold: list[requests.Response] = []
        waiter = threading.Thread(target=lambda: cold.append(stack.get("m", "cold", timeout=30)))
        waiter.start()
        wait_until(lambda: stack.origin_stats()["per_key"].get("cold") == 1, 10, "the cold key's origin call")
        fill_to_maxmemory(client)
        t_full = time.monotonic()

        # The refresh's write is refused whole: its waiter is woken with the reason, long before its
        # cold wait would run out, and the value is not stored.
        waiter.join(20)
        assert cold, "the cold reader never answered"
        answer = cold[0]
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "out_of_memory" and answer.headers["Retry-After"]
        assert time.monotonic() - t_full < 10
        assert not client.exists(DEFAULT_KEYSPACE.entry("m", "cold").entry)
        assert worker_metric(stack, "herdless_refresh_total", namespace="m", outcome="out_of_memory") == 1
        assert large_keys(client) == []

        # A stored value past its fresh life is served (stale), without a lease, read after read.
        stale = wait_until(lambda: _stale(stack), 10, "the stored value to be served stale")
        assert stale.json()["key"] == "stored"
        for _ in range(3):
            assert _stale(stack) is not None
        assert web_metric(stack, "herdless_refresh_suppressed_total", namespace="m", reason="out_of_memory") >= 4

        # A cold key has nothing to serve: refused at once, not after a cold wait.
        t0 = time.monotonic()
        r = stack.get("m", "never-stored")
        assert r.status_code == 503 and r.json()["error"] == "out_of_memory", r.text
        assert time.monotonic() - t0 < 2
        assert large_keys(client) == []

        # Memory comes free: the keys are refreshed again.
        client.config_set("maxmemory", 0)
        stack.origin_config(latency_ms=50, body_bytes=0)
        wait_until(lambda: stack.get("m", "never-stored").status_code == 200, 15, "a refresh once memory is free")


def _stale(stack: Stack) -> requests.Response | None:
    r = stack.get("m", "stored")
    assert r.status_code == 200, r.text
    return r if r.headers["X-Cache"] == "STALE" else None
