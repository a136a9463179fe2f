"""Redis dies mid-traffic and comes back on the same port: fast 503s meanwhile, service after.

With a near-cache, warm keys are answered from memory meanwhile: tests/faults/test_redis_outage.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from tests.faults.observe import TrafficLoop, worker_metric
from tests.stack import RedisServer, stack_for, wait_until

NAMESPACES = """
[namespaces.hot]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60

[namespaces.swr]
strategy = "swr"
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 1
"""
OUTAGE_SECONDS = 3.0
OUTAGE_ANSWER_LIMIT = 1.0
RECOVERY_LIMIT = 2.0


def test_redis_restart_gives_fast_503s_then_service_without_restarting_anything(tmp_path: Path) -> None:
    env = {
        "NEAR_CACHE": "false",  # nothing held in memory: every read of the outage is refused
        "ORIGIN_LATENCY_MS": "20",
        "LEASE_TTL_SECONDS": "2",
        "WEB_CONCURRENCY": "2",
    }
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        keys = [("hot", "a"), ("hot", "b"), ("swr", "c"), ("swr", "d")]
        for ns, key in keys:
            assert stack.get(ns, key).status_code == 200
        pids_before = {name: proc.pid for name, proc in stack.procs.items()}
        written_before = worker_metric(stack, "herdless_refresh_total", outcome="written")

        with TrafficLoop([stack.url(ns, k) for ns, k in keys], timeout=5, pause=0.02) as traffic:
            wait_until(lambda: len(traffic.samples) >= 10, 10, "traffic before the outage")
            assert all(s.status == 200 for s in traffic.samples)

            killed_at = time.monotonic()
            stack.redis.stop()  # SIGKILL
            # "A few seconds": long enough that a client backing off 2, 4, 6 s would miss the return.
            wait_until(
                lambda: traffic.since(killed_at) and traffic.samples[-1].at - killed_at >= OUTAGE_SECONDS,
                15,
                "traffic during the outage",
            )
            t0 = time.monotonic()
            ready = requests.get(stack.web_url + "/readyz", timeout=5)
            readyz_seconds = time.monotonic() - t0

            restarted_at = time.monotonic()
            stack.redis.start()
            wait_until(
                lambda: any(s.status == 200 for s in traffic.since(restarted_at)), 10, "a success after the restart"
            )
            wait_until(
                lambda: len(traffic.since(restarted_at + RECOVERY_LIMIT)) >= 20, 15, "traffic after the recovery limit"
            )

        during = [s for s in traffic.since(killed_at) if s.at < restarted_at]
        assert during, "no request was made during the outage"
        slow = [s for s in during if s.elapsed > OUTAGE_ANSWER_LIMIT]
        assert not slow, f"{len(slow)} requests took over {OUTAGE_ANSWER_LIMIT}s: {[round(s.elapsed, 2) for s in slow]}"
        # A request already past its Redis read when Redis died may still be answered; all others are 503 JSON.
        not_503 = [s for s in during if s.status != 503]
        assert len(not_503) <= 2 and all(s.status == 200 for s in not_503), [(s.status, s.body[:80]) for s in not_503]
        for s in during:
            if s.status == 503:
                assert s.headers["Content-Type"].startswith("application/json")
                assert json.loads(s.body)["error"] == "redis_unavailable"
                assert "Retry-After" in s.headers

        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unreachable")
        assert readyz_seconds < OUTAGE_ANSWER_LIMIT, readyz_seconds

        first_ok = min(s.at + s.elapsed for s in traffic.since(restarted_at) if s.status == 200)
        assert first_ok - restarted_at < RECOVERY_LIMIT, first_ok - restarted_at
        late = traffic.since(restarted_at + RECOVERY_LIMIT)
        assert all(s.status == 200 for s in late), [(s.status, s.body[:80]) for s in late if s.status != 200][:5]
        assert requests.get(stack.web_url + "/readyz", timeout=5).status_code == 200

        # Redis came back empty: the values were refreshed again by the same worker processes.
        assert worker_metric(stack, "herdless_refresh_total", outcome="written") >= written_before + len(keys)
        per_key = stack.origin_stats()["per_key"]
        assert all(per_key[key] >= 2 for _, key in keys), per_key
        new = stack.get("hot", "after-restart")
        assert new.status_code == 200 and new.headers["X-Cache"] == "MISS"
        assert {name: proc.pid for name, proc in stack.procs.items()} == pids_before
        assert all(proc.alive() for proc in stack.procs.values())


def test_a_broker_outage_keeps_serving_stale_and_fails_cold_misses_fast(tmp_path: Path) -> None:
    cache = RedisServer(tmp_path / "cache").start()
    broker = RedisServer(tmp_path / "broker").start()
    env = {
        "CELERY_BROKER_URL": broker.url,
        "ORIGIN_LATENCY_MS": "20",
        "LEASE_TTL_SECONDS": "5",
    }
    try:
        with stack_for(tmp_path, NAMESPACES, env, redis=cache) as stack:
            first = stack.get("swr", "kept").json()
            # A refresh is running (slow origin) when the broker goes away and comes back.
            stack.origin_config(latency_ms=1500)
            wait_until(lambda: stack.get("swr", "kept").headers["X-Cache"] == "STALE", 10, "the value to go stale")
            wait_until(lambda: stack.origin_stats()["per_key"]["kept"] == 2, 10, "the stale refresh to start")
            broker.stop()

            def timed(ns: str, key: str) -> tuple[requests.Response, float]:
                t0 = time.monotonic()
                r = stack.get(ns, key)
                return r, time.monotonic() - t0

            for _ in range(5):
                stale, elapsed = timed("swr", "kept")
                assert stale.status_code == 200 and stale.json() == first and elapsed < OUTAGE_ANSWER_LIMIT
                assert stale.headers["X-Cache"] == "STALE"
            cold, elapsed = timed("hot", "cold-without-broker")
            assert cold.status_code == 503 and cold.json()["error"] == "broker_unavailable", cold.text
            assert elapsed < OUTAGE_ANSWER_LIMIT and cold.headers["Retry-After"] == "1"
            ready = requests.get(stack.web_url + "/readyz", timeout=5)
            assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "ok"
            assert ready.json()["checks"]["broker"].startswith("unreachable")

            restarted_at = time.monotonic()
            broker.start()
            stack.origin_config(latency_ms=20)
            # The refresh that ran through the blip still lands, and its late ack does not kill the worker.
            wait_until(lambda: stack.get("swr", "kept").json()["count"] >= 2, 10, "the in-flight refresh written")
            wait_until(lambda: stack.get("hot", "cold-without-broker").status_code == 200, 10, "a cold miss served")
            assert time.monotonic() - restarted_at < RECOVERY_LIMIT + 1.5
            assert stack.procs["w1"].alive(), stack.procs["w1"].output()[-3000:]
            assert "Unrecoverable error" not in stack.procs["w1"].output()
            assert stack.get("hot", "after-the-blip").status_code == 200
    finally:
        broker.stop()
        cache.stop()


def test_a_persisted_redis_serves_its_stored_values_at_once_after_a_restart(tmp_path: Path) -> None:
    # Every write reaches the append-only file before Redis answers: a crash loses nothing.
    redis = RedisServer(tmp_path / "persisted", extra=["--appendonly", "yes", "--appendfsync", "always"]).start()
    env = {"ORIGIN_LATENCY_MS": "20"}
    try:
        with stack_for(tmp_path, NAMESPACES, env, redis=redis) as stack:
            keys = ["kept-a", "kept-b", "kept-c"]
            stored = {key: stack.get("hot", key).content for key in keys}
            calls = stack.origin_stats()["calls"]
            assert calls == len(keys)

            redis.stop()  # SIGKILL: a crash, not a clean shutdown
            redis.start()  # same port, same directory

            def first_answer(key: str) -> requests.Response:
                # The web tier may answer 503 while it replaces its broken connections; the
                # first answer with a body must be the stored value.
                return wait_until(
                    lambda: (r := stack.get("hot", key)).status_code != 503 and r, 10, f"an answer for {key}"
                )

            for key in keys:
                r = first_answer(key)
                assert r.status_code == 200 and r.headers["X-Cache"] == "HIT", (r.status_code, r.headers)
                assert r.content == stored[key]
            assert stack.origin_stats()["calls"] == calls  # nothing was refreshed
    finally:
        redis.stop()
