"""Refresh throughput: N never-seen keys asked for at once, one request each, against the refresh limit.

Every key is a cold miss, so each answer waits for one refresh (queue, worker,
origin call, write). Keys served per second is the refresh throughput; the
configuration allows at most min(worker concurrency, origin max concurrency)
refreshes in flight, each taking the origin latency, hence the limit.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import quote

from loadtest.httpclient import ConnectionPool, HTTPClientError, build_get
from loadtest.probes import OriginProbe
from loadtest.workload import new_run_id
from shared.protocol import Refusal

DEFAULT_WORKER_CONCURRENCY = 100
DEFAULT_ORIGIN_MAX_CONCURRENCY = 50
DEFAULT_ORIGIN_LATENCY_MS = 100.0
PREFORK_CONCURRENCY = 2  # the old default: one refresh per forked process


def _error_code(body: bytes) -> str:
    """The `error` field of herdless's JSON error body, to tell timeouts from refusals."""
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return ""


def refresh_limit(worker_concurrency: int, origin_max_concurrency: int, origin_latency_ms: float) -> float:
    """Refreshes per second the configuration allows: calls in flight at most, each lasting the latency."""
    if origin_latency_ms <= 0:
        raise ValueError("origin latency must be > 0 ms for a finite limit")
    return min(worker_concurrency, origin_max_concurrency) / (origin_latency_ms / 1000)


@dataclass(frozen=True)
class BenchSettings:
    """The stack settings a refreshbench ran with (what the limit is computed from)."""

    pool: str
    worker_concurrency: int
    origin_max_concurrency: int
    origin_latency_ms: float
    cold_wait_timeout_s: float

    @property
    def limit_per_s(self) -> float:
        return refresh_limit(self.worker_concurrency, self.origin_max_concurrency, self.origin_latency_ms)

    def stack_env(self) -> dict[str, str]:
        return {
            "WORKER_POOL": self.pool,
            "WORKER_CONCURRENCY": str(self.worker_concurrency),
            "ORIGIN_MAX_CONCURRENCY": str(self.origin_max_concurrency),
            "ORIGIN_LATENCY_MS": f"{self.origin_latency_ms:g}",
            "COLD_WAIT_TIMEOUT_SECONDS": f"{self.cold_wait_timeout_s:g}",
        }


@dataclass
class BurstResult:
    keys: int
    served: int
    errors_by_status: dict[str, int]
    connect_s: float  # opening the N connections, before the burst
    last_served_s: float | None  # from the burst's send to the last OK answer
    all_served_s: float | None  # the same, only when every key was served
    served_p50_s: float | None
    served_per_s: float | None  # keys served / last_served_s
    key_prefix: str
    answered_at_s: list[float] = field(default_factory=list, repr=False)


async def cold_burst(url: str, namespace: str, n: int, timeout: float, key_prefix: str) -> BurstResult:
    """Open n connections, then send one GET per never-seen key on each at once; time every answer."""
    pool = ConnectionPool.for_url(url, max_connections=n, timeout=timeout)
    loop = asyncio.get_running_loop()
    errors: Counter = Counter()
    t_connect = loop.time()
    conns = []
    for start in range(0, n, 200):  # 200 at a time so the listen backlog keeps up
        batch = await asyncio.gather(*(pool.connect() for _ in range(min(200, n - start))), return_exceptions=True)
        for conn in batch:
            if isinstance(conn, BaseException):
                errors[f"connect {type(conn).__name__}"] += 1
            else:
                conns.append(conn)
    connect_s = loop.time() - t_connect
    ns = quote(namespace, safe="")
    done_at: list[float] = []
    t0 = loop.time()

    async def one(i: int, conn: object) -> None:
        raw = build_get(pool.host_header, f"/v1/cache/{ns}/{quote(f'{key_prefix}{i}', safe='')}")
        try:
            resp = await conn.send(raw, timeout)  # type: ignore[attr-defined]
        except HTTPClientError as exc:
            errors[exc.kind] += 1
            return
        if 200 <= resp.status < 300:
            done_at.append(loop.time() - t0)
        else:
            errors[f"{resp.status} {_error_code(resp.body)}".strip()] += 1

    await asyncio.gather(*(one(i, conn) for i, conn in enumerate(conns)))
    for conn in conns:
        conn.abort()  # type: ignore[attr-defined]
    done_at.sort()
    served = len(done_at)
    last = done_at[-1] if done_at else None
    return BurstResult(
        keys=n,
        served=served,
        errors_by_status=dict(errors),
        connect_s=round(connect_s, 3),
        last_served_s=None if last is None else round(last, 3),
        all_served_s=None if last is None or served < n else round(last, 3),
        served_p50_s=round(done_at[served // 2], 3) if done_at else None,
        served_per_s=round(served / last, 1) if last else None,
        key_prefix=key_prefix,
        answered_at_s=[round(t, 4) for t in done_at],
    )


def run_refreshbench(
    url: str,
    origin_url: str,
    namespace: str,
    n: int,
    settings: BenchSettings,
    reset_origin: bool = True,
    cpu_seconds: Callable[[], dict[str, float]] | None = None,
) -> dict:
    """One burst of n cold keys against a running stack; the figures as a JSON-ready dict.
    With `cpu_seconds` (a started stack's), also the CPU each role spent per key served."""
    origin = OriginProbe(origin_url)
    if reset_origin:
        origin.reset()  # so max_in_flight is this burst's peak
    prefix = f"rb-{new_run_id()}-"
    before = origin.try_stats(prefix)
    cpu_before = cpu_seconds() if cpu_seconds else None
    burst = asyncio.run(cold_burst(url, namespace, n, settings.cold_wait_timeout_s + 10, prefix))
    time.sleep(0.2)
    cpu_after = cpu_seconds() if cpu_seconds else None
    after = origin.try_stats(prefix)
    cpu_ms_per_key = None
    if cpu_before is not None and cpu_after is not None and burst.served:
        cpu_ms_per_key = {
            role: round((cpu_after[role] - cpu_before.get(role, 0.0)) * 1000 / burst.served, 2) for role in cpu_after
        }
    limit = settings.limit_per_s
    result = asdict(burst)
    result.pop("answered_at_s")
    result.update(
        {
            "pool": settings.pool,
            "settings": asdict(settings),
            "limit_per_s": round(limit, 1),
            "ratio_to_limit": None if burst.served_per_s is None else round(burst.served_per_s / limit, 3),
            "errors": sum(burst.errors_by_status.values()),
            "origin_calls": None if after is None or before is None else after.prefixed - before.prefixed,
            "origin_max_in_flight": None if after is None else after.max_in_flight,
            "origin_max_in_flight_note": "since this burst started" if reset_origin else "since the origin started",
            "cpu_ms_per_key": cpu_ms_per_key,
        }
    )
    return result


COLUMNS = (
    ("pool", lambda r: r["pool"]),
    ("round", lambda r: str(r.get("round", 1))),
    ("concurrency", lambda r: str(r["settings"]["worker_concurrency"])),
    ("keys", lambda r: str(r["keys"])),
    ("served", lambda r: str(r["served"])),
    ("refreshes/s", lambda r: _fmt(r["served_per_s"])),
    ("limit/s", lambda r: _fmt(r["limit_per_s"])),
    ("ratio", lambda r: _fmt(r["ratio_to_limit"], 2)),
    ("all served s", lambda r: _fmt(r["all_served_s"], 2)),
    ("last served s", lambda r: _fmt(r["last_served_s"], 2)),
    ("errors", lambda r: ", ".join(f"{k}: {v}" for k, v in sorted(r["errors_by_status"].items())) or "0"),
    ("origin calls", lambda r: _fmt(r["origin_calls"])),
    ("origin max in flight", lambda r: _fmt(r["origin_max_in_flight"])),
    ("CPU ms/key web", lambda r: _fmt((r.get("cpu_ms_per_key") or {}).get("web"), 2)),
    ("CPU ms/key worker", lambda r: _fmt((r.get("cpu_ms_per_key") or {}).get("worker"), 2)),
    ("CPU ms/key redis", lambda r: _fmt((r.get("cpu_ms_per_key") or {}).get("redis"), 2)),
)


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(results: list[dict]) -> str:
    rows = [[name for name, _ in COLUMNS]] + [[get(r) for _, get in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(results: list[dict], command: str, machine: str) -> str:
    header = [name for name, _ in COLUMNS]
    lines = [
        "# herdless refresh throughput (refreshbench)",
        "",
        f"`{command}`",
        "",
        f"- Machine: {machine}",
        "- Each row: N never-seen keys requested at once, one request each (a cold miss per key)."
        " *refreshes/s* = keys served / time until the last one was served; *limit/s* ="
        " min(worker concurrency, origin max concurrency) / origin latency. Requests still waiting after"
        " COLD_WAIT_TIMEOUT_SECONDS get 503 and count as errors. *CPU ms/key*: user + system CPU"
        " of each role's processes (gunicorn master and workers; the Celery worker; redis-server)"
        " during the burst, per key served: the cost beside the throughput, and a figure other"
        " processes on the machine disturb far less than the rate.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(get(r) for _, get in COLUMNS) + " |" for r in results]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- overload: clients, not a burst


@dataclass
class ClientsResult:
    """`clients` clients, each asking for its share of never-seen keys one after the other."""

    clients: int
    keys: int
    connect_with_request: bool
    served: int
    refused_by_error: dict[str, int]  # 503s and other non-2xx answers (retries included), by status and error code
    failed_by_kind: dict[str, int]  # no answer at all (timeouts, resets, refused connects)
    last_served_s: float | None
    served_per_s: float | None
    served_p99_s: float | None
    served_max_s: float | None
    refused_max_s: float | None  # the slowest refusal: "refuse fast" means small
    refused_max_s_by_error: dict[str, float]  # the same per error code (a cold-wait timeout is slow by design)
    key_prefix: str


async def clients_run(
    url: str,
    namespace: str,
    clients: int,
    n: int,
    timeout: float,
    key_prefix: str,
    connect_with_request: bool,
    retry_s: float | None = None,
    give_up_s: float = 120.0,
) -> ClientsResult:
    """n keys over `clients` clients (n / clients each, in sequence, the next sent when the last
    answered, served or refused). With `connect_with_request` every client opens its connection
    at the moment it sends its first request, all at the same instant: the onset of a burst as
    a server meets it (connects and requests together); without, the connections are opened first.
    With `retry_s`, a refused key is asked for again after that long (as a client honouring
    Retry-After would), until it is served or `give_up_s` after the run began."""
    pool = ConnectionPool.for_url(url, max_connections=clients, timeout=timeout)
    loop = asyncio.get_running_loop()
    ns = quote(namespace, safe="")
    refused: Counter = Counter()
    failed: Counter = Counter()
    served_lat: list[float] = []
    refused_lat: list[float] = []
    slowest: dict[str, float] = {}
    served_at: list[float] = []
    per_client = [list(range(c, n, clients)) for c in range(clients)]
    conns: list[object | None] = [None] * clients
    if not connect_with_request:
        conns = list(await asyncio.gather(*(pool.connect() for _ in range(clients)), return_exceptions=True))
    t0 = loop.time()

    async def client(c: int) -> None:
        conn = conns[c]
        todo = list(reversed(per_client[c]))
        while todo:
            i = todo.pop()
            raw = build_get(pool.host_header, f"/v1/cache/{ns}/{quote(f'{key_prefix}{i}', safe='')}")
            sent = loop.time()
            try:
                if conn is None or isinstance(conn, BaseException) or conn.closed:  # type: ignore[attr-defined]
                    conn = await pool.connect(deadline=sent + timeout)
                resp = await conn.send(raw, timeout)  # type: ignore[attr-defined]
            except (HTTPClientError, OSError) as exc:
                failed[getattr(exc, "kind", type(exc).__name__)] += 1
                if conn is not None and not isinstance(conn, BaseException):
                    conn.abort()  # type: ignore[attr-defined]
                conn = None
                continue
            took = loop.time() - sent
            if 200 <= resp.status < 300:
                served_lat.append(took)
                served_at.append(loop.time() - t0)
            else:
                code = f"{resp.status} {_error_code(resp.body)}".strip()
                refused[code] += 1
                refused_lat.append(took)
                slowest[code] = max(slowest.get(code, 0.0), round(took, 3))
                if retry_s is not None and resp.status == 503 and loop.time() - t0 + retry_s < give_up_s:
                    await asyncio.sleep(retry_s)
                    todo.append(i)
        if conn is not None and not isinstance(conn, BaseException):
            conn.abort()  # type: ignore[attr-defined]

    await asyncio.gather(*(client(c) for c in range(clients)))
    served_lat.sort()
    last = max(served_at) if served_at else None
    return ClientsResult(
        clients=clients,
        keys=n,
        connect_with_request=connect_with_request,
        served=len(served_lat),
        refused_by_error=dict(refused),
        failed_by_kind=dict(failed),
        last_served_s=None if last is None else round(last, 3),
        served_per_s=round(len(served_lat) / last, 1) if last else None,
        served_p99_s=round(served_lat[int(0.99 * (len(served_lat) - 1))], 3) if served_lat else None,
        served_max_s=round(served_lat[-1], 3) if served_lat else None,
        refused_max_s=round(max(refused_lat), 3) if refused_lat else None,
        refused_max_s_by_error=slowest,
        key_prefix=key_prefix,
    )


def run_clients(
    url: str,
    origin_url: str,
    namespace: str,
    n: int,
    clients: int,
    settings: BenchSettings,
    *,
    connect_with_request: bool,
    retry_s: float | None = 1.0,
    cpu_seconds: Callable[[], dict[str, float]] | None = None,
) -> dict:
    """One clients run against a running stack, with its origin calls and CPU per key served."""
    origin = OriginProbe(origin_url)
    prefix = f"rc-{new_run_id()}-"
    before = origin.try_stats(prefix)
    cpu_before = cpu_seconds() if cpu_seconds else None
    timeout = 2 * settings.cold_wait_timeout_s + 10
    run = asyncio.run(clients_run(url, namespace, clients, n, timeout, prefix, connect_with_request, retry_s))
    time.sleep(0.2)
    cpu_after = cpu_seconds() if cpu_seconds else None
    after = origin.try_stats(prefix)
    result = asdict(run)
    result["cpu_ms_per_key"] = None
    if cpu_before is not None and cpu_after is not None and run.served:
        result["cpu_ms_per_key"] = {
            role: round((cpu_after[role] - cpu_before.get(role, 0.0)) * 1000 / run.served, 2) for role in cpu_after
        }
    result["origin_calls"] = None if after is None or before is None else after.prefixed - before.prefixed
    result["pool"] = settings.pool
    result["settings"] = asdict(settings)
    result["redis_unavailable"] = sum(v for k, v in run.refused_by_error.items() if "redis_unavailable" in k)
    return result


def overload_verdict(burst: dict, paced: dict, cold_wait_timeout_s: float) -> dict:
    """The issue's no-collapse figures for one burst beside its paced baseline."""
    ratio = None
    if burst["served_per_s"] and paced["served_per_s"]:
        ratio = round(burst["served_per_s"] / paced["served_per_s"], 3)
    # A cold-wait timeout answers after COLD_WAIT_TIMEOUT_SECONDS by design; every other refusal must be fast.
    timeout_code = f"503 {Refusal.COLD_WAIT_TIMEOUT}"
    slow_refusals = any(t > 1.0 for code, t in burst["refused_max_s_by_error"].items() if code != timeout_code)
    return {
        "ratio": ratio,
        "served_max_s": burst["served_max_s"],
        "bounded": burst["served_max_s"] is None or burst["served_max_s"] <= 2 * cold_wait_timeout_s,
        "refusals_fast": not slow_refusals,
        "redis_unavailable": burst["redis_unavailable"],
    }


def clients_line(r: dict) -> str:
    cpu = r.get("cpu_ms_per_key") or {}
    return (
        f"{r.get('label', '')} {r['clients']} clients{' (connect with request)' if r['connect_with_request'] else ''}:"
        f" {r['served']}/{r['keys']} keys served, {r['served_per_s']} keys/s, served p99 {r['served_p99_s']} s"
        f" max {r['served_max_s']} s, refused {r['refused_by_error'] or 0} (slowest {r['refused_max_s_by_error']}),"
        f" no answer {r['failed_by_kind'] or 0}, origin calls {r['origin_calls']},"
        f" CPU ms/key web {cpu.get('web')} worker {cpu.get('worker')} redis {cpu.get('redis')}"
    ).strip()
