"""MAX_COLD_WAITERS: past the limit a web process answers 503 at once instead of tying up threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.faults.observe import web_metric
from tests.stack import stack_for

NAMESPACES = """
[namespaces.demo]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""
LIMIT = 2
CLIENTS = 8
ORIGIN_MS = 1500


def test_cold_waiters_beyond_the_limit_get_503_immediately(tmp_path: Path) -> None:
    env = {
        "ORIGIN_LATENCY_MS": str(ORIGIN_MS),
        "MAX_COLD_WAITERS": str(LIMIT),
        "WEB_CONCURRENCY": "1",  # one process: the limit is per process
        "WEB_THREADS": "16",
        "COLD_WAIT_TIMEOUT_SECONDS": "10",
    }
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

        # The slots are given back: a later cold miss waits and is served.
        r = stack.get("demo", "later")
        assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
