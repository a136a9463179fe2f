"""Soft purge of a hot tag under open-loop load: `python -m loadtest.purgebench [--keys 500] [--rate 1000]`.

Starts its own stack (loadtest/launcher.py) with one namespace whose every value carries the tag
`hot-products`, stores `--keys` keys, then reads them uniformly at `--rate` requests per second
(open loop, the load test's own keep-alive client) and, `--purge-at` seconds in, soft-purges the
tag. Reports what the acceptance of issue 21 asks: origin calls for the purge (at most 1.05 per
key), and whether any client waited on the origin after it (an answer that is not HIT, EARLY or
STALE, or one slower than the origin's latency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from loadtest.httpclient import ConnectionPool, HTTPClientError, build_get
from loadtest.launcher import LocalStack

NAMESPACES = """
[namespaces.hot]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 600
tags = ["hot-products"]
"""


async def _load(
    web: str, keys: list[str], rate: float, duration: float, purge_at: float, purge: Any
) -> tuple[list[tuple[float, float, int, str]], float, float]:
    """(every answer as (sent s from start, seconds, status, X-Cache), when the purge was sent and
    when it answered, s from start)."""
    pool = ConnectionPool.for_url(web, max_connections=512, timeout=15.0)
    host = urlsplit(web).netloc
    requests_by_key = {k: build_get(host, f"/v1/cache/hot/{k}") for k in keys}
    rng = random.Random(21)
    loop = asyncio.get_running_loop()
    start = loop.time()
    answers: list[tuple[float, float, int, str]] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(offset: float, raw: bytes) -> None:
        t0 = loop.time()
        try:
            r = await pool.get(raw)
            answers.append((offset, loop.time() - t0, r.status, r.x_cache))
        except HTTPClientError as exc:
            answers.append((offset, loop.time() - t0, 0, exc.kind))

    purge_task = None
    purge_started = duration
    n = 0
    while True:
        offset = n / rate
        if offset >= duration:
            break
        now = loop.time() - start
        if offset > now:
            await asyncio.sleep(offset - now)
        if purge_task is None and offset >= purge_at:
            purge_started = loop.time() - start
            purge_task = loop.run_in_executor(None, purge)
        task = asyncio.create_task(one(offset, requests_by_key[rng.choice(keys)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)
    purged_at = await purge_task if purge_task is not None else duration
    pool.close()
    return answers, purge_started, purged_at - start


def run(keys: int, rate: float, duration: float, purge_at: float, origin_ms: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="herdless-purgebench-"))
    (workdir / "namespaces.toml").write_text(NAMESPACES)
    token = secrets.token_urlsafe(32)
    env = {"NAMESPACES_FILE": str(workdir / "namespaces.toml"), "ADMIN_TOKEN": token}
    env["ORIGIN_LATENCY_MS"] = str(origin_ms)
    names = [f"p{i}" for i in range(keys)]
    auth = {"Authorization": f"Bearer {token}"}
    with LocalStack(env=env) as stack:
        web = stack.web_urls[0]
        r = requests.post(f"{web}/v1/cache/hot/warm", json={"keys": names}, headers=auth, timeout=60)
        r.raise_for_status()
        deadline = time.monotonic() + 120
        while len(requests.get(stack.origin_url + "/stats", timeout=5).json()["per_key"]) < keys:
            if time.monotonic() > deadline:
                raise SystemExit("purgebench: the keys were not stored within 120 s")
            time.sleep(0.5)
        time.sleep(1)
        before = requests.get(stack.origin_url + "/stats", timeout=5).json()["per_key"]
        report: dict[str, Any] = {}

        def purge() -> None:
            answer = requests.post(
                f"{web}/v1/purge", json={"tags": ["hot-products"], "soft": True}, headers=auth, timeout=120
            )
            answer.raise_for_status()
            report["purge"] = answer.json()

        answers, purge_sent, purged_at = asyncio.run(_load(web, names, rate, duration, purge_at, _timed(purge)))
        time.sleep(1)
        after = requests.get(stack.origin_url + "/stats", timeout=5).json()["per_key"]
    calls = sum(after.get(k, 0) - before.get(k, 0) for k in names)
    since = [a for a in answers if a[0] >= purge_sent]
    latencies = [a[1] for a in since] or [0.0]
    outcomes: dict[str, int] = {}
    for a in since:
        label = a[3] if a[2] == 200 else f"{a[2]} {a[3]}".strip()
        outcomes[label] = outcomes.get(label, 0) + 1
    earlier = [a[1] for a in answers if a[0] < purge_sent] or [0.0]
    waited = sum(1 for a in since if a[2] != 200 or a[3] not in ("HIT", "EARLY", "STALE"))
    return {
        "keys": keys,
        "rate_offered": rate,
        "rate_answered": round(len(answers) / duration, 1),
        "purge": report.get("purge"),
        "purge_seconds": round(purged_at - purge_sent, 2),
        "origin_calls_after_purge": calls,
        "calls_per_key": round(calls / keys, 3),
        "answers_after_purge": outcomes,
        "not_served_from_store": waited,
        "slower_than_origin": sum(1 for x in latencies if x * 1000 >= origin_ms),
        "latency_before_purge_ms": {
            "p50": round(statistics.median(earlier) * 1000, 1),
            "max": round(max(earlier) * 1000, 1),
        },
        "latency_after_purge_ms": {
            "p50": round(statistics.median(latencies) * 1000, 1),
            "p99": round(
                (statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else max(latencies)) * 1000, 1
            ),
            "max": round(max(latencies) * 1000, 1),
        },
        "verdict": {"calls_within_1.05": calls <= 1.05 * keys, "no_client_waited_on_origin": waited == 0},
    }


def _timed(purge: Any) -> Any:
    """The purge, answering the moment it completed on the load loop's clock (asyncio's is monotonic)."""

    def call() -> float:
        purge()
        return time.monotonic()

    return call


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.purgebench", description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second, open loop")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of load")
    parser.add_argument("--purge-at", type=float, default=5.0, help="seconds into the load")
    parser.add_argument("--origin-ms", type=int, default=300, help="the demo origin's latency")
    args = parser.parse_args()
    print(json.dumps(run(args.keys, args.rate, args.duration, args.purge_at, args.origin_ms), indent=2))


if __name__ == "__main__":
    main()
