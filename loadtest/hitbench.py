"""Closed-loop throughput of one warm key: herdless's web tier against the plain Flask + redis-py baseline.

Both apps run under the same gunicorn config on the same machine and Redis,
and are measured alternately, round after round, by the same client, so
drifting background load hits both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from loadtest.httpclient import ConnectionPool, HTTPClientError, build_get
from loadtest.summary import new_histogram, percentiles_ms
from loadtest.workload import new_run_id

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Round:
    target: str
    seconds: float
    ok: int
    errors: int
    latency_ms: dict[str, Any]

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds


async def closed_loop(url: str, path: str, connections: int, seconds: float, warmup: float = 0.5) -> Round:
    """`connections` clients, each sending its next request as soon as the previous answer is in."""
    pool = ConnectionPool.for_url(url, max_connections=connections)
    raw = build_get(pool.host_header, path)
    loop = asyncio.get_running_loop()
    hist = new_histogram()
    counts = {"ok": 0, "errors": 0}
    start = loop.time() + warmup
    end = start + seconds

    async def client() -> None:
        conn = None
        while True:
            now = loop.time()
            if now >= end:
                break
            if conn is None or conn.closed:
                try:
                    conn = await pool.connect()
                except OSError:
                    counts["errors"] += 1
                    await asyncio.sleep(0.01)
                    continue
            try:
                resp = await conn.send(raw, 10.0)
            except HTTPClientError:
                conn = None
                if now >= start:
                    counts["errors"] += 1
                continue
            done = loop.time()
            if start <= now and done <= end:
                if resp.status == 200:
                    counts["ok"] += 1
                    hist.record_value(max(1, int((done - now) * 1e6)))
                else:
                    counts["errors"] += 1
        if conn is not None:
            conn.abort()

    await asyncio.gather(*(client() for _ in range(connections)))
    return Round("", seconds, counts["ok"], counts["errors"], percentiles_ms(hist))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def baseline_server(redis_url: str, gunicorn_conf: Path, port: int) -> Iterator[subprocess.Popen]:
    """Start the baseline app under gunicorn with the web tier's config; stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="herdless-baseline-") as prom_dir:
        env = dict(os.environ, WEB_PORT=str(port), REDIS_URL=redis_url, PROMETHEUS_MULTIPROC_DIR=prom_dir)
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(gunicorn_conf),
            "--bind",
            f"127.0.0.1:{port}",
            "loadtest.baseline_app:create_app()",
        ]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _get(url: str, path: str) -> tuple[int, str, bytes]:
    pool = ConnectionPool.for_url(url, max_connections=1, timeout=10)
    try:
        resp = await pool.get(build_get(pool.host_header, path))
        return resp.status, resp.x_cache, resp.body
    finally:
        pool.close()


async def warm_key(url: str, path: str, timeout: float = 45.0) -> bytes:
    """Request until the web tier answers from cache; return the cached body."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            status, x_cache, body = await _get(url, path)
            last = (status, x_cache)
            if status == 200 and x_cache in ("HIT", "EARLY", "STALE"):
                return body
        except ConnectionRefusedError as exc:
            raise SystemExit(f"hitbench: nothing listens at {url} ({exc}); start the stack or pass --url") from exc
        except (HTTPClientError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise SystemExit(f"hitbench: {url}{path} never answered from cache (last: {last})")


async def wait_ready(url: str, path: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"baseline gunicorn exited with {proc.returncode}: {err[-2000:]}")
        try:
            status, _, _ = await _get(url, path)
            if status == 200:
                return
        except (HTTPClientError, OSError):
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"baseline app at {url} not ready after {timeout}s")


def run_hitbench(
    url: str,
    namespace: str,
    redis_url: str,
    rounds: int,
    round_seconds: float,
    connections: int,
    gunicorn_conf: Path,
    progress: bool = True,
) -> dict[str, Any]:
    import redis

    from loadtest.baseline_app import baseline_key

    store = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        store.ping()
    except redis.RedisError as exc:
        raise SystemExit(
            f"hitbench: the stack's Redis does not answer at {redis_url} ({exc}); pass --redis-url"
            " (the REDIS_URL the stack runs with; `make run` prints it)"
        ) from exc
    key = f"hitbench-{new_run_id()}"
    path = f"/v1/cache/{quote(namespace, safe='')}/{quote(key, safe='')}"
    body = asyncio.run(warm_key(url, path))
    store.set(baseline_key(namespace, key), body, ex=3600)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    results: list[Round] = []
    try:
        with baseline_server(redis_url, gunicorn_conf, port) as proc:
            asyncio.run(wait_ready(base_url, path, proc))
            for i in range(rounds):
                order = [("herdless", url), ("baseline", base_url)]
                if i % 2:
                    order.reverse()
                for target, target_url in order:
                    r = asyncio.run(closed_loop(target_url, path, connections, round_seconds))
                    r.target = target
                    results.append(r)
                    if progress:
                        print(
                            f"round {i + 1}/{rounds} {target:>9}: {r.throughput:8.0f} req/s"
                            f" (p50 {r.latency_ms.get('p50', 0):.2f} ms, p99"
                            f" {r.latency_ms.get('p99', 0):.2f} ms,"
                            f" errors {r.errors})",
                            file=sys.stderr,
                        )
    finally:
        store.delete(baseline_key(namespace, key))
        store.close()

    def figures(target: str) -> dict[str, Any]:
        mine = [r for r in results if r.target == target]
        return {
            "rounds_req_per_s": [round(r.throughput, 1) for r in mine],
            "median_req_per_s": round(statistics.median(r.throughput for r in mine), 1),
            "errors": sum(r.errors for r in mine),
            "latency_ms": [r.latency_ms for r in mine],
        }

    herdless = figures("herdless")
    baseline = figures("baseline")
    ratio = herdless["median_req_per_s"] / baseline["median_req_per_s"] if baseline["median_req_per_s"] else None
    return {
        "url": url,
        "baseline_url": base_url,
        "namespace": namespace,
        "key": key,
        "value_bytes": len(body),
        "rounds": rounds,
        "round_seconds": round_seconds,
        "connections": connections,
        "gunicorn_conf": str(gunicorn_conf),
        "web_concurrency": os.environ.get("WEB_CONCURRENCY", "default"),
        "web_threads": os.environ.get("WEB_THREADS", "default"),
        "herdless": herdless,
        "baseline": baseline,
        "ratio": None if ratio is None else round(ratio, 3),
    }


def hitbench_markdown(result: dict[str, Any], command: str, machine: str) -> str:
    h, b = result["herdless"], result["baseline"]
    return "\n".join(
        [
            "# herdless hitbench — one warm key, closed loop",
            "",
            f"`{command}`",
            "",
            f"- Machine: {machine}",
            f"- {result['connections']} keep-alive connections, {result['rounds']} rounds of"
            f" {result['round_seconds']:g}s per app, alternated; value {result['value_bytes']} bytes",
            f"- Both under `gunicorn -c {result['gunicorn_conf']}`"
            f" (WEB_CONCURRENCY={result['web_concurrency']},"
            f" WEB_THREADS={result['web_threads']})",
            "",
            "| app | median req/s | rounds req/s | errors |",
            "|---|---|---|---|",
            f"| herdless `{result['namespace']}` | {h['median_req_per_s']} | {h['rounds_req_per_s']} | {h['errors']} |",
            f"| baseline (Flask + redis-py GET) | {b['median_req_per_s']} | {b['rounds_req_per_s']} | {b['errors']} |",
            "",
            f"**Ratio herdless / baseline: {result['ratio']}**",
            "",
        ]
    )
