"""A soft purge of a tag carried by 500 hot keys, under steady load: no client waits on the origin
(every answer is served from what is stored: HIT or STALE, never MISS), and each key costs the
origin one call (at most 1.05 x 500)."""

from __future__ import annotations

import statistics
import sys
import threading
import time

import requests

from tests.stack import Stack, wait_until

ADMIN = "hot-tag-admin-2b4d6f8a0c1e3a5b7d9f"
STACK_NAMESPACES = """
[namespaces.hot]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 600
tags = ["hot-products"]
"""
ORIGIN_MS = 400  # a reader that waited on the origin would take at least this long
STACK_ENV = {"ADMIN_TOKEN": ADMIN, "WEB_CONCURRENCY": "2", "ORIGIN_LATENCY_MS": str(ORIGIN_MS)}
KEYS = [f"p{i}" for i in range(500)]
CLIENTS = 24


def test_a_soft_purge_of_500_hot_keys_under_load_refreshes_each_once_and_nobody_waits(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    warm = requests.post(f"{stack.web_url}/v1/cache/hot/warm", json={"keys": KEYS}, headers=auth, timeout=30)
    assert warm.status_code == 202, warm.text
    wait_until(lambda: len(stack.origin_stats()["per_key"]) >= len(KEYS), 60, "every key stored")
    wait_until(lambda: stack.get("hot", KEYS[-1]).headers["X-Cache"] == "HIT", 10, "the last key stored")
    before = stack.origin_stats()["per_key"]
    assert all(before[k] == 1 for k in KEYS)

    answers: list[tuple[float, float, int, str]] = []  # (sent at, seconds, status, X-Cache)
    errors: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        session, i = requests.Session(), n * 37
        while not stop.is_set():
            t0 = time.perf_counter()
            r = session.get(stack.url("hot", KEYS[i % len(KEYS)]), timeout=10)
            answers.append((t0, time.perf_counter() - t0, r.status_code, r.headers.get("X-Cache", "")))
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:120]}")
            i += 7

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        purged_at = time.perf_counter()
        r = requests.post(
            stack.web_url + "/v1/purge", json={"tags": ["hot-products"], "soft": True}, headers=auth, timeout=60
        )
        assert r.status_code == 200, r.text
        assert r.json()["keys"]["soft"] == len(KEYS)

        def all_refreshed() -> bool:
            per_key = stack.origin_stats()["per_key"]
            return all(per_key[k] >= 2 for k in KEYS)

        wait_until(all_refreshed, 60, "one refresh of every key")
        time.sleep(1)  # a little more load once refreshed
    finally:
        stop.set()
        for t in threads:
            t.join()
    after = stack.origin_stats()["per_key"]
    calls = sum(after[k] - before[k] for k in KEYS)
    since = [a for a in answers if a[0] >= purged_at]
    span = max(a[0] for a in since) - purged_at
    latencies = [a[1] for a in since]
    p99 = statistics.quantiles(latencies, n=100)[98]
    outcomes = {x: sum(1 for a in since if a[3] == x) for x in {a[3] for a in since}}
    sys.stderr.write(
        f"\nsoft purge of 500 hot keys: {calls} origin calls; {len(since)} reads in {span:.1f} s after it "
        f"({len(since) / span:.0f}/s, {len(answers) / (max(a[0] for a in answers) - answers[0][0]):.0f}/s overall) "
        f"{outcomes}; p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.0f} ms (origin {ORIGIN_MS} ms)\n"
    )
    assert calls <= 1.05 * len(KEYS), calls
    assert not errors, errors[:5]
    # Nobody waited for the origin: no MISS, every answer from what was stored.
    assert set(outcomes) <= {"HIT", "STALE", "EARLY"}, outcomes
    assert outcomes.get("STALE", 0) >= 1
