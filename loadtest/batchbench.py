"""Batch reads and batch origins, measured on one private stack in one run (docs/groups.md).

    python -m loadtest.batchbench [--rounds 3] [--keys 2000]

1. **Warm batch reads.** 100 warm keys, held in the web process's near-cache: one client over
   one keep-alive connection reads them as one batch read (POST .../batch) and as 100 single
   reads (GET), the two alternating round by round; it prints the keys per second of each, and
   counts (Redis MONITOR) the commands that name any of the keys while the batch reads run.
2. **Cold fill through a batch origin.** `--keys` never-seen keys, asked for as batch reads of
   100 keys all at once, in a namespace whose batch origin takes 100 keys a call and in one
   whose batch origin takes 1 (the same origin), alternating round by round with new keys: the
   origin calls, the slowest batch read, and the entries that were not 200.

The stack: redis-server, the demo origin (ORIGIN_LATENCY_MS=100), one Celery worker (gevent,
WORKER_CONCURRENCY=100), one gunicorn master with one worker (so the keep-alive connection and
the near-cache are one process's). Figures on a shared machine are noisy: compare within a run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
import requests

from loadtest.launcher import LocalStack
from shared.keys import DEFAULT_KEYSPACE

NAMESPACES = """
[namespaces.warm]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 3600

[namespaces.fill100]
origin = "${ORIGIN_BASE_URL}/items/{key}"
batch_origin = "${ORIGIN_BASE_URL}/items?ids={keys}"
batch_max_keys = 100
cache_ttl_seconds = 3600

[namespaces.fill1]
origin = "${ORIGIN_BASE_URL}/items/{key}"
batch_origin = "${ORIGIN_BASE_URL}/items?ids={keys}"
batch_max_keys = 1
cache_ttl_seconds = 3600
"""
WARM_KEYS = [f"warm-{i}" for i in range(100)]
ROUND_SECONDS = 3.0


class CommandWatch:
    """Redis MONITOR in a thread: the commands naming any of `names` until stop()."""

    def __init__(self, url: str, names: list[str]) -> None:
        self.names, self.seen, self.total = names, 0, 0
        self._url = url
        self._client = redis.Redis.from_url(url)
        self._marker = f"batchbench-end-{time.time_ns()}"
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self._client.monitor() as monitor:
            self._started.set()
            for command in monitor.listen():
                text = command["command"]
                if self._marker in text:
                    return
                self.total += 1
                if any(name in text for name in self.names):
                    self.seen += 1

    def __enter__(self) -> CommandWatch:
        self._thread.start()
        self._started.wait(5)
        time.sleep(0.2)  # MONITOR's subscription reaches the server
        return self

    def __exit__(self, *exc: object) -> None:
        redis.Redis.from_url(self._url).echo(self._marker)
        self._thread.join(10)


def warm_rounds(stack: LocalStack, redis_url: str, rounds: int, seconds: float = ROUND_SECONDS) -> dict[str, Any]:
    web = stack.web_urls[0]
    session = requests.Session()  # one client, one keep-alive connection, for both ways
    batch_url = f"{web}/v1/cache/warm/batch"
    for _ in range(50):  # cold, then held in the near-cache
        entries = session.post(batch_url, json={"keys": WARM_KEYS}, timeout=30).json()
        if all(e["x_cache"] == "HIT" for e in entries.values()):
            break
        time.sleep(0.1)
    names = [DEFAULT_KEYSPACE.entry("warm", key).entry for key in WARM_KEYS]
    rates: dict[str, list[float]] = {"batch": [], "single": []}
    redis_commands = 0
    for round_no in range(rounds):
        for way in ("batch", "single") if round_no % 2 == 0 else ("single", "batch"):
            keys = 0
            deadline = time.perf_counter() + seconds
            started = time.perf_counter()
            if way == "batch":
                with CommandWatch(redis_url, names) as watch:
                    while time.perf_counter() < deadline:
                        r = session.post(batch_url, json={"keys": WARM_KEYS}, timeout=30)
                        assert r.status_code == 200, r.text
                        keys += len(WARM_KEYS)
                redis_commands += watch.seen
            else:
                while time.perf_counter() < deadline:
                    for key in WARM_KEYS:
                        r = session.get(f"{web}/v1/cache/warm/{key}", timeout=30)
                        assert r.status_code == 200, r.text
                    keys += len(WARM_KEYS)
            rates[way].append(keys / (time.perf_counter() - started))
    batch, single = statistics.median(rates["batch"]), statistics.median(rates["single"])
    return {"batch_keys_per_s": rates["batch"], "single_keys_per_s": rates["single"], "ratio": batch / single,
            "redis_commands_naming_the_keys": redis_commands}  # fmt: skip


def settle(stack: LocalStack) -> None:
    """Wait until the origin has had no call for a second: the last round's backlog is done."""
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < 1.0:
        calls = requests.get(stack.origin_url + "/stats", timeout=10).json()["calls"]
        if calls != last:
            last, quiet_since = calls, time.monotonic()
        time.sleep(0.2)


def fill(stack: LocalStack, namespace: str, keys: list[str]) -> dict[str, Any]:
    web, origin = stack.web_urls[0], stack.origin_url
    settle(stack)
    cpu_before = stack.cpu_seconds()
    before = requests.get(origin + "/stats", timeout=10).json()["batch_calls"]
    chunks = [keys[i : i + 100] for i in range(0, len(keys), 100)]

    def one(chunk: list[str]) -> tuple[dict[str, Any], float]:
        t0 = time.perf_counter()
        r = requests.post(f"{web}/v1/cache/{namespace}/batch", json={"keys": chunk}, timeout=60)
        return r.json(), time.perf_counter() - t0

    started = time.perf_counter()
    with ThreadPoolExecutor(len(chunks)) as pool:
        results = list(pool.map(one, chunks))
    elapsed = time.perf_counter() - started
    settle(stack)  # refreshes still running after their readers gave up count too
    after = requests.get(origin + "/stats", timeout=10).json()["batch_calls"]
    cpu = {role: used - cpu_before.get(role, 0.0) for role, used in stack.cpu_seconds().items()}
    errors: dict[str, int] = {}
    for entries, _ in results:
        for entry in entries.values():
            if entry["status"] != 200:
                code = str(entry.get("error", entry["status"]))
                errors[code] = errors.get(code, 0) + 1
    return {"namespace": namespace, "keys": len(keys), "origin_calls": after - before, "seconds": elapsed,
            "slowest_batch_s": max(s for _, s in results), "errors": errors, "cpu": cpu}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.batchbench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--round-seconds", type=float, default=ROUND_SECONDS, help="each warm round's length")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="herdless-batchbench-"))
    (workdir / "namespaces.toml").write_text(NAMESPACES)
    env = {
        "NAMESPACES_FILE": str(workdir / "namespaces.toml"),
        "ORIGIN_LATENCY_MS": "100",
        "WEB_CONCURRENCY": "1",
        "WORKER_POOL": "gevent",
        "WORKER_CONCURRENCY": "100",
        "BATCH_MAX_KEYS": "1000",
        "COLD_WAIT_TIMEOUT_SECONDS": "5",
        # One key a call floods the demo origin with connections; a refused one must not open the
        # breaker for the rounds after it (each round's errors are printed).
        "BREAKER_FAIL_MAX": "100000",
    }
    with LocalStack(env=env, workdir=workdir / "stack") as stack:
        redis_url = f"redis://127.0.0.1:{stack.redis_port}/0"
        warm = warm_rounds(stack, redis_url, args.rounds, args.round_seconds)
        print("warm batch reads, 100 keys, one client over one keep-alive connection:")
        print(f"  batch read : {', '.join(f'{r:,.0f}' for r in warm['batch_keys_per_s'])} keys/s")
        print(f"  100 GETs   : {', '.join(f'{r:,.0f}' for r in warm['single_keys_per_s'])} keys/s")
        print(f"  ratio (medians): {warm['ratio']:.1f}x")
        print(f"  Redis commands naming the keys during the batch reads: {warm['redis_commands_naming_the_keys']}")
        print(f"cold fill, {args.keys} keys as batch reads of 100 at once (origin latency 100 ms):")
        for round_no in range(args.rounds):
            order = ("fill100", "fill1") if round_no % 2 == 0 else ("fill1", "fill100")
            for namespace in order:
                keys = [f"r{round_no}-{namespace}-{i}" for i in range(args.keys)]
                result = fill(stack, namespace, keys)
                print(
                    f"  round {round_no + 1} {namespace:8}: {result['origin_calls']:5d} origin calls, "
                    f"all answered in {result['seconds']:.2f} s (slowest batch {result['slowest_batch_s']:.2f} s), "
                    f"not 200: {result['errors'] or 0}; CPU s: "
                    + ", ".join(f"{role} {used:.1f}" for role, used in sorted(result["cpu"].items()) if used >= 0.05)
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
