"""Refreshes under trouble: a paused refresher (fencing), a failing origin (breaker), a killed worker."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import requests

from shared.breaker import breaker_fields_key
from tests.e2e.conftest import LONG_AND_SWR_NAMESPACES
from tests.stack import metric, stack_for, wait_until


def test_a_paused_refresher_past_its_lease_cannot_overwrite_a_newer_value(tmp_path: Path) -> None:
    env = {
        "LEASE_TTL_SECONDS": "1",
        "COLD_WAIT_TIMEOUT_SECONDS": "20",
        "ORIGIN_LATENCY_MS": "1500",
    }
    with stack_for(tmp_path, LONG_AND_SWR_NAMESPACES, env, workers=0) as stack:
        # debug: Celery's "succeeded ...: 'lost_lease'" line tells when the paused refresher is done.
        slow = stack.start_worker("slow", extra_env={"LOG_LEVEL": "debug"}, extra_args=["--pool", "solo"], wait=True)
        answers: list[requests.Response] = []
        waiter = threading.Thread(target=lambda: answers.append(stack.get("k", "fenced", timeout=30)))
        waiter.start()
        # The slow worker's origin call is running: pause the worker so its lease runs out.
        wait_until(lambda: stack.origin_stats()["per_key"].get("fenced") == 1, 10, "the first origin call")
        slow.send(signal.SIGSTOP)
        try:
            stack.origin_config(latency_ms=50)
            stack.start_worker("fast", extra_args=["--pool", "solo"], wait=True)
            # The waiting request re-takes the expired lease; the fast worker writes call #2.
            wait_until(lambda: answers, 20, "the cold request to be answered")
            assert answers[0].status_code == 200 and answers[0].json()["count"] == 2
        finally:
            slow.send(signal.SIGCONT)
        waiter.join(5)
        # The paused refresher resumes with call #1's answer: its lease is gone, so is its write.
        wait_until(lambda: "'lost_lease'" in slow.output(), 20, "the paused refresher's write to be refused")
        r = stack.get("k", "fenced")
        assert r.json()["count"] == 2 and r.headers["X-Cache"] == "HIT"
        assert stack.origin_stats()["per_key"]["fenced"] == 2


RESET_SECONDS = 3


def test_failing_origin_serves_stale_opens_the_breaker_and_recovers(tmp_path: Path) -> None:
    env = {
        "BREAKER_FAIL_MAX": "3",
        "BREAKER_RESET_TIMEOUT_SECONDS": str(RESET_SECONDS),
        "ORIGIN_LATENCY_MS": "20",
    }
    with stack_for(tmp_path, LONG_AND_SWR_NAMESPACES, env) as stack:
        keys = [f"warm-{i}" for i in range(6)]
        originals = {k: stack.get("swr", k).json() for k in keys}
        stack.origin_config(failure_rate=1.0)
        failures: list[str] = []
        # A key with no value gets the failure's own code: here the origin's HTTP 500.
        cold = stack.get("k", "cold-while-failing")
        assert cold.status_code == 502 and cold.json()["error"] == "origin_error", cold.text
        assert "Retry-After" in cold.headers

        def read_all(expect_original: bool = True) -> None:
            for k in keys:
                r = stack.get("swr", k)
                if r.status_code != 200 or (expect_original and r.json() != originals[k]):
                    failures.append(f"{k}: {r.status_code} {r.text[:100]}")

        def worker_metrics() -> str:
            return requests.get(stack.worker_metrics_url, timeout=5).text

        def breaker_open() -> bool:
            read_all()
            return metric(worker_metrics(), "herdless_breaker_state") == 2

        wait_until(breaker_open, 20, "the breaker to open", interval=0.1)

        # Let calls that were already in flight finish, then the origin must hear nothing.
        def refused_by_breaker() -> bool:
            read_all()
            return metric(worker_metrics(), "herdless_refresh_total", outcome="breaker_open") >= 2

        wait_until(refused_by_breaker, 10, "refreshes refused by the open breaker", interval=0.1)
        # A key with no value, while the breaker is open: 502 breaker_open, not a generic origin_error.
        cold = stack.get("k", "cold-while-open")
        assert cold.status_code == 502 and cold.json()["error"] == "breaker_open", cold.text
        assert int(cold.headers["Retry-After"]) >= 1
        calls_when_open = stack.origin_stats()["calls"]
        refused_before = metric(worker_metrics(), "herdless_refresh_total", outcome="breaker_open")
        # For as long as the breaker stays open (BREAKER_RESET_TIMEOUT_SECONDS from its opening,
        # on the Redis clock), reads keep coming and the origin hears nothing.
        redis = stack.redis.client()
        fields = breaker_fields_key(stack.origin_url.removeprefix("http://"))

        def redis_now_ms() -> int:
            seconds, micros = redis.time()
            return int(seconds) * 1000 + int(micros) // 1000

        # Fixed now: a failed probe after this moment re-opens the breaker with a new opened_at.
        half_open_at = int(redis.hget(fields, "opened_at")) + RESET_SECONDS * 1000
        checked = 0
        while True:
            read_all()
            calls = stack.origin_stats()["calls"]
            if redis_now_ms() >= half_open_at:  # from here a probe may be let through
                break
            assert calls == calls_when_open, "the origin was called while the breaker was open"
            checked += 1
            time.sleep(0.05)
        assert checked >= 3, "the breaker half-opened before the reads could check it"
        text = worker_metrics()
        assert metric(text, "herdless_refresh_total", outcome="breaker_open") >= refused_before
        assert metric(text, "herdless_origin_calls_total", outcome="error") >= 3
        assert not failures, failures[:5]

        stack.origin_config(failure_rate=0.0)

        def refreshed() -> bool:
            read_all(expect_original=False)
            return stack.get("swr", keys[0]).json()["count"] > originals[keys[0]]["count"]

        wait_until(lambda: refreshed() and not failures, 30, "a refresh after the origin recovered", interval=0.2)
        wait_until(lambda: metric(worker_metrics(), "herdless_breaker_state") == 0, 10, "the breaker to close")
        assert not failures, failures[:5]

        # Each transition is one log line, by the worker that made it: as many as were counted.
        log = stack.procs["w1"].output()
        text = worker_metrics()
        origin = stack.origin_url.removeprefix("http://")
        ours = [line for line in log.splitlines() if f"circuit breaker of origin {origin}:" in line]
        lines = {to: [line for line in ours if f"-> {to}" in line] for to in ("open", "half-open", "closed")}
        for to, found in lines.items():
            assert len(found) == metric(text, "herdless_breaker_transitions_total", to=to) >= 1, (to, found)
        assert len([line for line in lines["open"] if "closed -> open" in line]) == 1
        assert "after 3 consecutive failures" in lines["open"][0] and "HTTP 500" in lines["open"][0]
        assert len(lines["closed"]) == 1 and "half-open -> closed" in lines["closed"][0]


def test_a_worker_killed_mid_refresh_delays_the_refresh_but_fails_no_request(tmp_path: Path) -> None:
    env = {
        "LEASE_TTL_SECONDS": "2",
        "ORIGIN_LATENCY_MS": "50",
    }
    with stack_for(tmp_path, LONG_AND_SWR_NAMESPACES, env) as stack:
        key = "killed"
        v1 = stack.get("swr", key).json()
        stack.origin_config(latency_ms=3000)
        failures: list[str] = []
        wait_until(lambda: stack.get("swr", key).headers["X-Cache"] == "STALE", 10, "the value to go stale")
        wait_until(lambda: stack.origin_stats()["per_key"].get(key) == 2, 10, "the refresh's origin call")
        stack.procs["w1"].stop(signal.SIGKILL)
        stack.origin_config(latency_ms=50)
        stack.start_worker("w2", wait=True)

        def new_value_served() -> bool:
            r = stack.get("swr", key)
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:100]}")
                return False
            return r.json()["count"] > v1["count"] and r.json()["count"] >= 3

        wait_until(new_value_served, 20, "a refresh after the lease of the killed worker ran out", interval=0.05)
        assert not failures, failures[:5]
