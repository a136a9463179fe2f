"""Per-process bounds: past MAX_COLD_WAITERS, or MAX_REQUESTS_IN_FLIGHT, a web process answers
503 at once instead of tying up threads or making every read slow; reads that cost it nothing (a
near-cache hit, a reader joining a wait under way) are never refused."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.faults.observe import web_metric
from tests.stack import stack_for, wait_until

NAMESPACES = """
[namespaces.demo]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""


def one_process(origin_ms: int, **bounds: str) -> dict[str, str]:
    """One web process (the bounds are per process), a slow origin and a cold wait outlasting it."""
    return {"ORIGIN_LATENCY_MS": str(origin_ms), "WEB_CONCURRENCY": "1", "COLD_WAIT_TIMEOUT_SECONDS": "10", **bounds}


LIMIT = 2
CLIENTS = 8
ORIGIN_MS = 1500


def test_cold_waiters_beyond_the_limit_get_503_immediately(tmp_path: Path) -> None:
    env = one_process(ORIGIN_MS, MAX_COLD_WAITERS=str(LIMIT), WEB_THREADS="16")
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        barrier = threading.Barrier(CLIENTS)

        def one(i: int) -> tuple[int, float, dict[str, str], str]:
            # Half the clients share one key, the rest each want their own: the limit counts waiters.
            key = "shared" if i % 2 else f"own-{i}"
            barrier.wait()
            t0 = time.monotonic()
            r = requests.get(stack.url("demo", key), timeout=20)
            return r.status_code, time.monotonic() - t0, dict(r.headers), r.text

        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(one, range(CLIENTS)))

        served = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 503]
        assert len(served) + len(refused) == CLIENTS, [(r[0], r[3][:80]) for r in results]
        assert len(served) == LIMIT, [(r[0], r[3][:80]) for r in results]
        for _, elapsed, headers, body in refused:
            assert '"too_many_waiters"' in body, body
            assert int(headers["Retry-After"]) >= 1
            assert elapsed < 0.5 * ORIGIN_MS / 1000, elapsed  # refused at once, not after waiting
        for _, elapsed, _, _ in served:
            assert elapsed >= 0.9 * ORIGIN_MS / 1000  # these really waited for the refresh
        assert web_metric(stack, "herdless_requests_total", outcome="error") >= len(refused)
        assert web_metric(stack, "herdless_refused_total", reason="too_many_waiters") == len(refused)

        # The slots are given back: a later cold miss waits and is served.
        r = stack.get("demo", "later")
        assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"


IN_FLIGHT = 3
EXCESS = 5
SLOW_ORIGIN_MS = 2000


def test_reads_beyond_the_bound_in_flight_get_a_fast_503_and_the_admitted_ones_are_served(tmp_path: Path) -> None:
    env = one_process(SLOW_ORIGIN_MS, MAX_REQUESTS_IN_FLIGHT=str(IN_FLIGHT))
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        for _ in range(2):  # a MISS stores the value; the HIT that reads it puts it in the near-cache
            assert stack.get("demo", "warm").status_code == 200
        requests.post(stack.origin_url + "/stats/reset", timeout=5)

        def get(key: str) -> tuple[int, float, dict[str, str], str]:
            t0 = time.monotonic()
            r = requests.get(stack.url("demo", key), timeout=20)
            return r.status_code, time.monotonic() - t0, dict(r.headers), r.text

        with ThreadPoolExecutor(IN_FLIGHT + EXCESS + 2) as pool:
            # IN_FLIGHT slow cold reads take every slot: each waits for its 2 s refresh.
            admitted = [pool.submit(get, f"slow-{i}") for i in range(IN_FLIGHT)]
            wait_until(lambda: stack.origin_stats()["in_flight"] == IN_FLIGHT, 10, "the admitted refreshes to run")
            # While they wait, every further read that needs Redis is refused at once...
            gate = threading.Barrier(EXCESS)

            def excess(i: int) -> tuple[int, float, dict[str, str], str]:
                gate.wait()
                return get(f"excess-{i}")

            refused = list(pool.map(excess, range(EXCESS)))
            # ...but a near-cache hit and a reader joining the wait for slow-0 are not.
            joiner = pool.submit(get, "slow-0")
            near_hit = get("warm")
            served = [f.result() for f in admitted] + [joiner.result()]

        for status, elapsed, headers, body in refused:
            assert status == 503, body
            assert '"overloaded"' in body, body
            assert headers["Content-Type"].startswith("application/json")
            assert int(headers["Retry-After"]) >= 1
            assert elapsed < 0.25 * SLOW_ORIGIN_MS / 1000, elapsed  # at once, not after a wait
        assert near_hit[0] == 200 and near_hit[2]["X-Cache"] == "HIT"
        for status, _, headers, body in served:
            assert status == 200 and headers["X-Cache"] == "MISS", body
        assert stack.origin_stats()["calls"] == IN_FLIGHT  # the refused reads queued no refresh
        assert web_metric(stack, "herdless_requests_total", outcome="error") >= EXCESS
        assert web_metric(stack, "herdless_refused_total", reason="overloaded") == EXCESS
        assert web_metric(stack, "herdless_refused_total", reason="queue_full") == 0

        # The slots are given back: a later cold read is admitted and served.
        r = stack.get("demo", "later")
        assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
