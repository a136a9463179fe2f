"""Redis dies under steady load: warm keys keep being answered from memory (STALE), new keys get a
fast 503, /readyz says degraded; Redis comes back empty and each key costs the origin one call."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.faults.observe import web_metric
from tests.stack import stack_for, wait_until

NAMESPACES = """
[namespaces.hot]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""
KEYS = [f"warm-{i}" for i in range(200)]
RATE = 150.0  # requests/s, open loop (the 500/s is more than two shared cores give a test)
OUTAGE_SECONDS = 8.0  # the 20 s, shortened to keep the suite fast
ORIGIN_MAX_CONCURRENCY = 4
FAST_503_SECONDS = 0.1


@dataclass
class Answer:
    sent_at: float
    key: str
    status: int  # 0: no HTTP answer
    elapsed: float
    x_cache: str
    body: bytes
    headers: dict[str, str]


class OpenLoop:
    """Sends GETs for random warm keys on a fixed schedule, whatever the server does."""

    def __init__(self, stack_url: str, rate: float) -> None:
        self.url = stack_url
        self.rate = rate
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=48)
        self._local = threading.local()
        self._thread = threading.Thread(target=self._schedule, daemon=True)

    def __enter__(self) -> OpenLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=True)

    def _schedule(self) -> None:
        rng = random.Random(3)
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            due = start + n / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self._pool.submit(self.get, rng.choice(KEYS))
            n += 1

    def get(self, key: str) -> Answer:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        t0 = time.monotonic()
        try:
            r = session.get(f"{self.url}/v1/cache/hot/{key}", timeout=10)
            answer = Answer(
                t0, key, r.status_code, time.monotonic() - t0, r.headers.get("X-Cache", ""), r.content, dict(r.headers)
            )
        except requests.RequestException:
            session.close()
            answer = Answer(t0, key, 0, time.monotonic() - t0, "", b"", {})
        self.answers.append(answer)
        return answer

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in list(self.answers) if start <= a.sent_at < end]


def test_warm_keys_are_served_stale_from_memory_while_redis_is_down_and_refreshed_once_after(tmp_path: Path) -> None:
    env = {
        "WEB_CONCURRENCY": "1",  # one process, so that it surely read every key before the outage
        "ORIGIN_LATENCY_MS": "20",
        "ORIGIN_MAX_CONCURRENCY": str(ORIGIN_MAX_CONCURRENCY),
        "LEASE_TTL_SECONDS": "5",
    }
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        with ThreadPoolExecutor(max_workers=20) as pool:
            assert all(r.status_code == 200 for r in pool.map(lambda k: stack.get("hot", k), KEYS))
            # The first read of each key waited for its refresh; the second is a HIT kept in memory.
            assert all(r.headers["X-Cache"] == "HIT" for r in pool.map(lambda k: stack.get("hot", k), KEYS))
        calls_before = stack.origin_stats()["per_key"]
        assert all(calls_before[k] == 1 for k in KEYS)

        with OpenLoop(stack.web_url, RATE) as load:
            wait_until(lambda: len(load.answers) >= RATE, 20, "a second of load before the outage")
            killed_at = time.monotonic()
            stack.redis.stop()  # SIGKILL

            # New keys while Redis is down: a fast 503 JSON each, never a connect timeout.
            wait_until(lambda: not stack.get("hot", "probe-new").ok, 10, "the outage to be noticed")
            cold = []
            for i in range(20):
                t0 = time.monotonic()
                r = requests.get(f"{stack.web_url}/v1/cache/hot/new-{i}", timeout=10)
                cold.append((r, time.monotonic() - t0))
            ready = requests.get(stack.web_url + "/readyz", timeout=5)
            status = requests.get(stack.web_url + "/status.json", timeout=10).json()
            degraded_gauge = web_metric(stack, "herdless_redis_degraded")
            wait_until(lambda: time.monotonic() - killed_at >= OUTAGE_SECONDS, OUTAGE_SECONDS + 5, "the outage")

            restarted_at = time.monotonic()
            stack.redis.start()  # empty: nothing was persisted
            # Every key fresh again: answered by the web tier from a value Redis holds again.
            fresh: set[str] = set()

            def all_fresh() -> bool:
                fresh.update(
                    a.key for a in load.between(restarted_at, time.monotonic()) if a.x_cache in ("HIT", "MISS")
                )
                return len(fresh) == len(KEYS)

            wait_until(all_fresh, 30, "every key answered fresh after Redis returned")
            recovered_at = time.monotonic()
            wait_until(lambda: len(load.between(recovered_at, time.monotonic())) >= RATE, 10, "a second after")

        during = load.between(killed_at, restarted_at)
        assert len(during) >= RATE * OUTAGE_SECONDS * 0.8, len(during)
        errors = [(a.key, a.status, a.body[:100]) for a in during if a.status != 200]
        assert not errors, f"{len(errors)} of {len(during)} warm reads failed during the outage: {errors[:5]}"
        # Past the first moments (a read may still have been a near-cache HIT), every answer is STALE from memory.
        settled = [a for a in during if a.sent_at >= killed_at + 0.5]
        assert settled and all(a.x_cache == "STALE" for a in settled), {a.x_cache for a in settled}
        assert max(a.elapsed for a in settled) < 1.0

        for r, elapsed in cold:
            assert r.status_code == 503 and r.headers["Content-Type"].startswith("application/json")
            assert r.json()["error"] == "redis_unavailable" and r.headers["Retry-After"] == "1"
            assert elapsed <= FAST_503_SECONDS, elapsed
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded" and ready.json()["checks"]["redis"].startswith("unreachable")
        assert status["redis_degraded_processes"] == 1 and status["degraded_answers"]["stale"] > 0
        assert degraded_gauge == 1

        after = load.between(recovered_at, time.monotonic())
        assert after and all(a.status == 200 for a in after), [
            (a.status, a.body[:80]) for a in after if a.status != 200
        ]
        # Redis came back empty: one origin call per key refreshed it, within the origin's cap.
        stats = stack.origin_stats()
        extra = {k: stats["per_key"][k] - calls_before[k] for k in KEYS}
        assert set(extra.values()) == {1}, {k: n for k, n in extra.items() if n != 1}
        assert stats["max_in_flight"] <= ORIGIN_MAX_CONCURRENCY, stats["max_in_flight"]
        assert requests.get(stack.web_url + "/readyz", timeout=5).json()["status"] == "ready"
        assert web_metric(stack, "herdless_redis_degraded") == 0
        assert json.loads(stack.get("hot", "brand-new").content)  # a cold key is served again


FALLBACK_NAMESPACES = """
[namespaces.direct]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
fallback = "origin"
origin_max_concurrency = 2

[namespaces.hot]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""


def test_an_origin_fallback_answers_cold_keys_from_the_origin_and_a_purged_value_stays_gone_while_redis_is_down(
    tmp_path: Path,
) -> None:
    token = "t" * 40
    env = {"WEB_CONCURRENCY": "1", "ORIGIN_LATENCY_MS": "500", "ADMIN_TOKEN": token}
    with stack_for(tmp_path, FALLBACK_NAMESPACES, env) as stack:
        for ns, key in (("direct", "warm"), ("hot", "purged")):
            assert stack.get(ns, key).ok and stack.get(ns, key).headers["X-Cache"] == "HIT"
        purge = requests.delete(stack.url("hot", "purged"), headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert purge.status_code == 204
        stack.redis.stop()
        wait_until(lambda: not stack.get("hot", "cold").ok, 10, "the outage to be noticed")
        assert stack.get("direct", "warm").headers["X-Cache"] == "STALE"  # held: no origin call
        # A value purged before the outage is not among what the process answers from memory.
        gone = stack.get("hot", "purged")
        assert gone.status_code == 503 and gone.json()["error"] == "redis_unavailable", gone.text

        # Readers of one cold key share one origin call.
        with ThreadPoolExecutor(max_workers=10) as pool:
            shared = list(pool.map(lambda _: stack.get("direct", "shared"), range(10)))
        assert all(r.status_code == 200 for r in shared), [(r.status_code, r.text[:80]) for r in shared]
        assert len({r.content for r in shared}) == 1 and shared[0].headers["Cache-Control"] == "no-store"
        assert stack.origin_stats()["per_key"]["shared"] == 1

        # Distinct cold keys: at most origin_max_concurrency calls at once, the rest refused at once.
        def timed(key: str) -> tuple[requests.Response, float]:
            t0 = time.monotonic()
            r = stack.get("direct", key)
            return r, time.monotonic() - t0

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(timed, [f"distinct-{i}" for i in range(6)]))
        served = [r for r, _ in answers if r.status_code == 200]
        refused = [(r, elapsed) for r, elapsed in answers if r.status_code != 200]
        assert served and refused, [(r.status_code, r.text[:80]) for r, _ in answers]
        for r, elapsed in refused:
            assert r.status_code == 503 and r.json()["error"] == "redis_unavailable", r.text
            assert elapsed <= FAST_503_SECONDS * 2, elapsed
        assert stack.origin_stats()["max_in_flight"] <= 2

        # A namespace without the fallback still refuses its cold keys.
        assert stack.get("hot", "another-cold").status_code == 503
        assert web_metric(stack, "herdless_degraded_answers_total", namespace="direct", answer="origin") == 1 + len(
            served
        )
