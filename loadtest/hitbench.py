"""Closed-loop throughput of one warm key: herdless with and without its near-cache against Flask + one redis-py GET.

For each gunicorn worker class, hitbench starts a private stack (redis-server, demo
origin, one worker; `loadtest/launcher.py`) and three web tiers on it, all under
`web/gunicorn.conf.py` with the same WEB_WORKER_CLASS, WEB_CONCURRENCY and WEB_THREADS:
herdless with NEAR_CACHE=true, herdless with NEAR_CACHE=false, and the baseline
(`loadtest/baseline_app.py`). It warms one key, measures the three in an order that
rotates every round, so drifting background load hits all of them alike, reads the
herdless tiers' near-cache counters, and stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families

from launcher.processes import LaunchError, Process, free_port, http_ok, wait_until
from loadtest.httpclient import ConnectionPool, HTTPClientError, build_get
from loadtest.launcher import LocalStack
from loadtest.summary import new_histogram, percentiles_ms

TARGETS = ("near_cache_on", "near_cache_off", "baseline")
TARGET_LABELS = {
    "near_cache_on": "herdless, NEAR_CACHE=true",
    "near_cache_off": "herdless, NEAR_CACHE=false",
    "baseline": "baseline (Flask + one redis-py GET)",
}
HERDLESS_TARGETS = ("near_cache_on", "near_cache_off")
TARGET_RATIO = 1.10  # near-cache on / baseline, the figure the team must show
WARM_TTL_SECONDS = 3600  # long enough that the warm key stays a plain HIT, never EARLY, through the run
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "web/gunicorn.conf.py"]


@dataclass(frozen=True)
class HitbenchSettings:
    classes: tuple[str, ...] = ("gevent", "gthread")
    web_concurrency: int = 2
    web_threads: int = 4
    rounds: int = 5
    round_seconds: float = 5.0
    connections: int = 32
    namespace: str = "demo"

    def stack_env(self, worker_class: str) -> dict[str, str]:
        """Environment shared by all three web tiers of one worker class (and the rest of the stack)."""
        return {
            "WEB_WORKER_CLASS": worker_class,
            "WEB_CONCURRENCY": str(self.web_concurrency),
            "WEB_THREADS": str(self.web_threads),
            "CACHE_TTL_SECONDS": str(WARM_TTL_SECONDS),
            "NEAR_CACHE": "true",
        }


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


# ---------------------------------------------------------------- pure figures


def rotated_order(targets: Sequence[str], round_index: int) -> list[str]:
    """Round i starts with target i (mod n), so each target goes first, second and last equally often."""
    if not targets:
        return []
    k = round_index % len(targets)
    return list(targets[k:]) + list(targets[:k])


def throughput_ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def target_figures(rounds: Sequence[Round]) -> dict[str, Any]:
    """One target's rounds, in the order they ran: median req/s, every round's figure, latency medians, errors."""
    if not rounds:
        return {"rounds_req_per_s": [], "median_req_per_s": 0.0, "p50_ms": None, "p99_ms": None, "errors": 0}

    def median_of(name: str) -> float | None:
        values = [r.latency_ms[name] for r in rounds if r.latency_ms.get(name) is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "rounds_req_per_s": [round(r.throughput, 1) for r in rounds],
        "median_req_per_s": round(statistics.median(r.throughput for r in rounds), 1),
        "p50_ms": median_of("p50"),  # median over the rounds of each round's p50
        "p99_ms": median_of("p99"),
        "errors": sum(r.errors for r in rounds),
        "latency_ms": [r.latency_ms for r in rounds],
    }


def class_figures(rounds: Sequence[Round]) -> dict[str, Any]:
    """The three targets' figures and the two ratios against the baseline."""
    targets = {t: target_figures([r for r in rounds if r.target == t]) for t in TARGETS}
    base = targets["baseline"]["median_req_per_s"]
    ratios = {
        "near_cache_on_vs_baseline": throughput_ratio(targets["near_cache_on"]["median_req_per_s"], base),
        "near_cache_off_vs_baseline": throughput_ratio(targets["near_cache_off"]["median_req_per_s"], base),
    }
    on = ratios["near_cache_on_vs_baseline"]
    return {"targets": targets, "ratios": ratios, "target_ratio_met": on is not None and on >= TARGET_RATIO}


def near_cache_counts(metrics_text: str, namespace: str) -> dict[str, Any]:
    """From a herdless web tier's /metrics: near-cache lookups by result and the namespace's requests by outcome."""
    near: dict[str, float] = {}
    requests: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "herdless_near_cache_total":
                near[sample.labels["result"]] = near.get(sample.labels["result"], 0) + sample.value
            elif sample.name == "herdless_requests_total" and sample.labels.get("namespace") == namespace:
                requests[sample.labels["outcome"]] = requests.get(sample.labels["outcome"], 0) + sample.value
    return {
        "near_cache_hits": int(near.get("hit", 0)),
        "requests": int(sum(requests.values())),
        "near_cache_by_result": {k: int(v) for k, v in sorted(near.items())},
        "requests_by_outcome": {k: int(v) for k, v in sorted(requests.items()) if v},
    }


def counts_during(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    hits = after["near_cache_hits"] - before["near_cache_hits"]
    requests = after["requests"] - before["requests"]
    return {
        "near_cache_hits": hits,
        "requests": requests,
        "near_cache_share": round(hits / requests, 4) if requests else None,
    }


# ---------------------------------------------------------------- the stack


@contextlib.contextmanager
def hitbench_stack(settings: HitbenchSettings, worker_class: str) -> Iterator[tuple[LocalStack, dict[str, str]]]:
    """The private stack with its NEAR_CACHE=true tier, a NEAR_CACHE=false tier and the baseline; all stop on exit."""
    with LocalStack(env=settings.stack_env(worker_class)) as stack:
        extra: list[Process] = []
        try:
            off_port, base_port = free_port(), free_port()
            off = Process(
                "web-near-cache-off",
                [*GUNICORN, "web.app:create_app()"],
                stack.env(WEB_PORT=str(off_port), NEAR_CACHE="false"),
                stack.logdir,
            )
            extra.append(off)
            base = Process(
                "baseline",
                [*GUNICORN, "loadtest.baseline_app:create_app()"],
                stack.env(WEB_PORT=str(base_port)),
                stack.logdir,
            )
            extra.append(base)
            urls = {
                "near_cache_on": stack.web_urls[0],
                "near_cache_off": f"http://127.0.0.1:{off_port}",
                "baseline": f"http://127.0.0.1:{base_port}",
            }
            for proc, target in ((off, "near_cache_off"), (base, "baseline")):
                url = urls[target]
                wait_until(lambda url=url: http_ok(url + "/healthz"), 60, f"{target} web tier {url}", process=proc)
            yield stack, urls
        finally:
            for proc in extra:  # all at once: each gunicorn takes a second or more to stop
                proc.terminate()
            for proc in extra:
                proc.stop()


async def _answer(url: str, path: str) -> tuple[int, str, bytes]:
    pool = ConnectionPool.for_url(url, max_connections=1, timeout=10)
    try:
        resp = await pool.get(build_get(pool.host_header, path))
        return resp.status, resp.x_cache, resp.body
    finally:
        pool.close()


def answer_until_hit(url: str, path: str, timeout: float = 30.0) -> bytes:
    """Request until the tier answers 200 with X-Cache: HIT; return the body."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, x_cache, body = asyncio.run(_answer(url, path))
            last = (status, x_cache)
            if status == 200 and x_cache == "HIT":
                return body
        except (HTTPClientError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise LaunchError(f"hitbench: {url}{path} never answered 200 X-Cache: HIT (last: {last})")


def read_metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def warm(stack: LocalStack, urls: dict[str, str], namespace: str, key: str) -> tuple[str, int]:
    """Fill the key through herdless, copy its value to the baseline's Redis key, and see all three answer HIT."""
    import redis

    from loadtest.baseline_app import baseline_key

    path = f"/v1/cache/{quote(namespace, safe='')}/{quote(key, safe='')}"
    body = answer_until_hit(urls["near_cache_on"], path)
    store = redis.Redis(host="127.0.0.1", port=stack.redis_port)
    try:
        store.set(baseline_key(namespace, key), body, ex=WARM_TTL_SECONDS)
    finally:
        store.close()
    for target in ("near_cache_off", "baseline"):
        if answer_until_hit(urls[target], path, timeout=10) != body:
            raise LaunchError(f"hitbench: {target} answers a different body for {path}")
    return path, len(body)


def run_class(settings: HitbenchSettings, worker_class: str, key: str, progress: bool = True) -> dict[str, Any]:
    """Start the three tiers for one worker class, run the alternating rounds, read the counters, stop."""
    with hitbench_stack(settings, worker_class) as (stack, urls):
        path, value_bytes = warm(stack, urls, settings.namespace, key)
        before = {t: near_cache_counts(read_metrics(urls[t]), settings.namespace) for t in HERDLESS_TARGETS}
        rounds: list[Round] = []
        orders = []
        for i in range(settings.rounds):
            order = rotated_order(TARGETS, i)
            orders.append(order)
            for target in order:
                r = asyncio.run(closed_loop(urls[target], path, settings.connections, settings.round_seconds))
                rounds.append(replace(r, target=target))
                if progress:
                    print(
                        f"{worker_class} round {i + 1}/{settings.rounds} {target:>14}: {r.throughput:8.0f} req/s"
                        f" (p50 {r.latency_ms.get('p50', 0):.2f} ms, p99 {r.latency_ms.get('p99', 0):.2f} ms,"
                        f" errors {r.errors})",
                        file=sys.stderr,
                        flush=True,
                    )
        after = {t: near_cache_counts(read_metrics(urls[t]), settings.namespace) for t in HERDLESS_TARGETS}
    near_cache = {t: {"during_rounds": counts_during(before[t], after[t]), "after_rounds": after[t]} for t in after}
    return {
        "worker_class": worker_class,
        "web_concurrency": settings.web_concurrency,
        "web_threads": settings.web_threads,
        "path": path,
        "value_bytes": value_bytes,
        "orders": orders,
        **class_figures(rounds),
        "near_cache": near_cache,
    }


def run_hitbench(settings: HitbenchSettings, run_id: str, progress: bool = True) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "settings": asdict(settings),
        "target_ratio": TARGET_RATIO,
        "classes": [run_class(settings, wc, f"hitbench-{run_id}", progress) for wc in settings.classes],
    }


# ---------------------------------------------------------------- reports


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def class_lines(c: dict[str, Any]) -> list[str]:
    """One worker class as a markdown table, its ratios and its near-cache counts."""
    lines = [
        "| target | median req/s | rounds req/s (in run order) | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for t in TARGETS:
        f = c["targets"][t]
        rounds = ", ".join(f"{x:.0f}" for x in f["rounds_req_per_s"])
        lines.append(
            f"| {TARGET_LABELS[t]} | {f['median_req_per_s']:.0f} | {rounds} | {_ms(f['p50_ms'])} |"
            f" {_ms(f['p99_ms'])} | {f['errors']} |"
        )
    r = c["ratios"]
    verdict = "met" if c["target_ratio_met"] else "missed"
    lines += [
        "",
        f"- near-cache on / baseline: **{r['near_cache_on_vs_baseline']}** (target ≥ {TARGET_RATIO:.2f}: {verdict})",
        f"- near-cache off / baseline: **{r['near_cache_off_vs_baseline']}**",
    ]
    for t in HERDLESS_TARGETS:
        d = c["near_cache"][t]["during_rounds"]
        a = c["near_cache"][t]["after_rounds"]
        lines.append(
            f'- {TARGET_LABELS[t]}: during the rounds `herdless_near_cache_total{{result="hit"}}` rose by'
            f" {d['near_cache_hits']} while `herdless_requests_total` rose by {d['requests']}"
            f" (after the rounds: {a['near_cache_hits']} hits of {a['requests']} requests;"
            f" outcomes {a['requests_by_outcome']})"
        )
    return lines


def hitbench_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    machine = report["machine"]
    lines = [
        "# herdless hitbench — one warm key, closed loop, near-cache on/off vs Flask + one redis-py GET",
        "",
        f"`{report['command']}`",
        "",
        f"- Run id {report['run_id']}, commit {report['commit']}",
        f"- Machine: {machine['description']}",
        f"- Per worker class, one private stack; all three tiers under `gunicorn -c web/gunicorn.conf.py` with"
        f" WEB_CONCURRENCY={s['web_concurrency']}, WEB_THREADS={s['web_threads']} (gthread only),"
        f" CACHE_TTL_SECONDS={WARM_TTL_SECONDS}",
        f"- {s['connections']} keep-alive connections, {s['rounds']} rounds of {s['round_seconds']:g} s per"
        " target, the order rotating each round; req/s counts 200 answers",
        "",
    ]
    for c in report["classes"]:
        lines += [f"## WEB_WORKER_CLASS={c['worker_class']}", "", *class_lines(c), ""]
    return "\n".join(lines)


def terminal_summary(report: dict[str, Any]) -> str:
    lines = []
    for c in report["classes"]:
        lines.append(f"{c['worker_class']}:")
        for t in TARGETS:
            f = c["targets"][t]
            lines.append(
                f"  {t:>14}: {f['median_req_per_s']:8.0f} req/s (rounds {f['rounds_req_per_s']}),"
                f" p50 {_ms(f['p50_ms'])} ms, p99 {_ms(f['p99_ms'])} ms, errors {f['errors']}"
            )
        r = c["ratios"]
        lines.append(
            f"  ratio near-cache on/baseline {r['near_cache_on_vs_baseline']}"
            f" ({'met' if c['target_ratio_met'] else 'MISSED'} ≥ {TARGET_RATIO:.2f}),"
            f" near-cache off/baseline {r['near_cache_off_vs_baseline']}"
        )
        for t in HERDLESS_TARGETS:
            d = c["near_cache"][t]["during_rounds"]
            lines.append(f"  {t}: near-cache hits {d['near_cache_hits']} of {d['requests']} requests during the rounds")
    return "\n".join(lines)
