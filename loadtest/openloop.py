"""The open-loop generator: sends on a fixed schedule, whatever the server does, and records everything.

Latency is measured from each request's *intended* send time, so a slow
server cannot hide its slowness by slowing the generator down (no coordinated
omission). If the generator itself falls behind the schedule, the lag is
recorded per request and shown in the report.
"""

from __future__ import annotations

import array
import asyncio
import gc
import math
import random
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import quote

from loadtest.httpclient import ConnectionPool, HTTPClientError, Response, build_get
from loadtest.probes import MetricsProbe, OriginProbe, bucket_delta, histogram_quantile
from loadtest.steady import NGINX_X_CACHE
from loadtest.workload import KeySpace, ZipfSampler, arrival_offsets, new_run_id

SCENARIOS = ("steady", "cold-herd", "outage")
# X-Cache values the web tier sends; "" means the response had no X-Cache header.
X_CACHE_CODES = ("HIT", "EARLY", "STALE", "MISS", "NEGATIVE", "", "other")
_CODE = {name: i for i, name in enumerate(X_CACHE_CODES)}
_OTHER = _CODE["other"]
CLIENT_ERROR_STATUS = 0  # status recorded when no HTTP response came back
# /v1/cache/<namespace>/<key>; /items/<key> (a proxy before the origin); <proxy_mount>/items/<key>
# (herdless's own proxy namespace mounted at proxy_mount before the demo origin)
PATH_STYLES = ("herdless", "origin", "proxy")
X_CACHE_DIALECTS = ("herdless", "nginx")
DEFAULT_WARMUP_SECONDS = 10.0
# the demo origin stamps each value with the unix time it made it: served age of a proxy without Age
_BODY_TIME = re.compile(rb'"time":\s*([0-9.]+)')


@dataclass
class RunConfig:
    url: str = "http://127.0.0.1:8000"
    namespace: str = "demo"
    scenario: str = "steady"
    rate: float = 200.0
    duration: float = 20.0
    keys: int = 100
    zipf: float = 1.1
    ttl: float = 5.0
    arrivals: str = "poisson"
    seed: int | None = None
    origin_url: str = "http://127.0.0.1:9000"
    metrics_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:9540/metrics"])
    max_connections: int = 512
    timeout: float = 15.0
    clients: int = 1000
    warmup: float | None = None  # seconds excluded from "after warm-up" figures; default 10 s (see summary)
    drain: float = 1.0  # least seconds to wait after the last answer before the final origin count
    drain_timeout: float = 30.0  # most seconds to wait for queue depth 0 and origin in-flight 0
    progress: bool = True
    label: str = ""
    # more base URLs of the same service (web nodes, nginx nodes): requests alternate over url + these
    extra_urls: list[str] = field(default_factory=list)
    path_style: str = "herdless"
    x_cache_dialect: str = "herdless"
    proxy_mount: str = "/demo"  # path_style "proxy" only

    @property
    def warmup_seconds(self) -> float:
        return DEFAULT_WARMUP_SECONDS if self.warmup is None else self.warmup

    @property
    def urls(self) -> list[str]:
        return [self.url, *self.extra_urls]


@dataclass
class Records:
    """One row per request, as columns: cheap to append, easy to hand to numpy."""

    offset: array.array = field(default_factory=lambda: array.array("d"))  # intended send, s from start
    latency: array.array = field(default_factory=lambda: array.array("d"))  # s, from intended send
    lag: array.array = field(default_factory=lambda: array.array("d"))  # s the send was late
    status: array.array = field(default_factory=lambda: array.array("h"))
    x_cache: array.array = field(default_factory=lambda: array.array("b"))
    key: array.array = field(default_factory=lambda: array.array("i"))
    age: array.array = field(default_factory=lambda: array.array("d"))  # served age s, NaN if unknown

    def __len__(self) -> int:
        return len(self.offset)


@dataclass
class RunResult:
    config: RunConfig
    run_id: str
    key_prefix: str
    started_at: float  # unix time of offset 0
    records: Records
    error_kinds: Counter
    key_names: list[str]
    seconds: int
    origin_calls_per_second: list[int | None]
    origin_total_per_second: list[int | None]
    queue_depth_per_second: list[float | None]
    origin_calls: int | None  # calls for this run's keys, after the drain
    origin_calls_all_keys: int | None
    origin_per_key: dict[str, int]
    scheduled: int
    sent_elapsed: float  # s from offset 0 to the last send
    elapsed: float  # s from offset 0 until every response was in
    peak_connections: int
    connects: int
    waited_for_connection: int
    max_age_seen: int | None
    outage: dict[str, float | int | None] | None = None
    notes: list[str] = field(default_factory=list)
    # this run's keys' origin calls at offset 0, 1, 2, ... s (index = second)
    origin_cumulative: list[int | None] = field(default_factory=list)
    drain: dict = field(default_factory=dict)  # how the final count waited for the queue and origin to go idle
    refresh_lag_p99_s: float | None = None  # over the run and its drain, from the worker's histogram
    refresh_lag_buckets: list[tuple[float, float]] = field(default_factory=list)  # that histogram's run delta
    origin_max_in_flight: int | None = None  # the demo origin's peak concurrent calls (since start or reset)

    def config_dict(self) -> dict:
        return asdict(self.config)


def _max_age(cache_control: str) -> int | None:
    i = cache_control.find("max-age=")
    if i < 0:
        return None
    digits = ""
    for ch in cache_control[i + 8 :]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


class _Progress:
    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.label = label
        self._last_plain = 0.0

    def show(self, line: str, final: bool = False) -> None:
        if not self.enabled:
            return
        text = f"[{self.label}] {line}" if self.label else line
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text + ("\n" if final else ""))
            sys.stderr.flush()
        elif final or time.monotonic() - self._last_plain >= 5:
            self._last_plain = time.monotonic()
            sys.stderr.write(text + "\n")
            sys.stderr.flush()


class OpenLoopRun:
    """One scenario against one namespace; `await run()` returns a RunResult."""

    def __init__(self, config: RunConfig) -> None:
        if config.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}")
        self.cfg = config
        self.run_id = new_run_id()
        self.keyspace = KeySpace(self.run_id, config.keys)
        self.rng = random.Random(config.seed)
        if config.path_style not in PATH_STYLES:
            raise ValueError(f"path_style must be one of {PATH_STYLES}")
        self.pools = [
            ConnectionPool.for_url(url, max_connections=config.max_connections, timeout=config.timeout)
            for url in config.urls
        ]
        self.pool = self.pools[0]
        self.x_cache_codes = dict(_CODE)
        if config.x_cache_dialect == "nginx":
            self.x_cache_codes = {status: _CODE[ours] for status, ours in NGINX_X_CACHE.items()}
        self.origin = OriginProbe(config.origin_url)
        self.queue = MetricsProbe(config.metrics_urls)
        self.records = Records()
        self.error_kinds: Counter = Counter()
        self.max_age_seen: int | None = None
        self.in_flight = 0
        self._all_done: asyncio.Event | None = None
        self._t0 = 0.0  # event-loop time of offset 0, fixed by _start_clock
        self._start_wall = time.time()
        # set once offset 0 is fixed: a bench acting on the stack mid-run (restartbench) times itself by it
        self.clock_started = threading.Event()
        self._sec_requests: Counter = Counter()
        self._sec_errors: Counter = Counter()
        self._sec_latency_max: dict[int, float] = {}
        self._sec_x: Counter = Counter()
        self._sent = 0
        self._last_send = 0.0
        self._tasks: set[asyncio.Task] = set()
        self.progress = _Progress(config.progress, config.label or config.namespace)

    # ------------------------------------------------------------ helpers
    def _path(self, key: str) -> str:
        if self.cfg.path_style == "origin":
            return f"/items/{quote(key, safe='')}"
        if self.cfg.path_style == "proxy":
            return f"{self.cfg.proxy_mount}/items/{quote(key, safe='')}"
        return f"/v1/cache/{quote(self.cfg.namespace, safe='')}/{quote(key, safe='')}"

    def _served_age(self, resp: Response) -> float:
        if resp.age >= 0:
            return float(resp.age)
        if self.cfg.x_cache_dialect == "nginx":
            m = _BODY_TIME.search(resp.body)
            if m:
                return max(0.0, time.time() - float(m.group(1)))
        return math.nan

    def _record(self, offset: float, latency: float, lag: float, key: int, resp: Response | None) -> None:
        rec = self.records
        rec.offset.append(offset)
        rec.latency.append(latency)
        rec.lag.append(lag)
        rec.key.append(key)
        sec = int(offset)
        self._sec_requests[sec] += 1
        if latency > self._sec_latency_max.get(sec, 0.0):
            self._sec_latency_max[sec] = latency
        if resp is None:
            rec.status.append(CLIENT_ERROR_STATUS)
            rec.x_cache.append(_CODE[""])
            rec.age.append(math.nan)
            self._sec_errors[sec] += 1
            return
        status = resp.status
        rec.status.append(status)
        rec.age.append(self._served_age(resp) if 200 <= status < 300 else math.nan)
        code = self.x_cache_codes.get(resp.x_cache, _OTHER)
        rec.x_cache.append(code)
        self._sec_x[(sec, code)] += 1
        if not (200 <= status < 300 or status == 304):
            self._sec_errors[sec] += 1
            self.error_kinds[f"http_{status}"] += 1
        elif resp.cache_control:
            age = _max_age(resp.cache_control)
            if age is not None and (self.max_age_seen is None or age > self.max_age_seen):
                self.max_age_seen = age

    async def _one(self, offset: float, key: int, raw: bytes, intended: float, pool: ConnectionPool) -> None:
        loop = asyncio.get_running_loop()
        lag = loop.time() - intended
        self._last_send = max(self._last_send, loop.time())
        resp: Response | None
        try:
            # the timeout runs from the intended send time, like the latency
            resp = await pool.get(raw, deadline=intended + self.cfg.timeout)
        except HTTPClientError as exc:
            self.error_kinds[exc.kind] += 1
            resp = None
        except OSError as exc:  # connect refused / reset
            self.error_kinds[type(exc).__name__] += 1
            resp = None
        except asyncio.CancelledError:  # still unanswered when the run gave up waiting
            self.error_kinds["unanswered"] += 1
            resp = None
        self._record(offset, loop.time() - intended, lag, key, resp)
        self.in_flight -= 1
        if self.in_flight == 0 and self._all_done is not None:
            self._all_done.set()

    # ------------------------------------------------------------ schedule
    async def _send_schedule(self, offsets: list[float], keys: list[int], raws: list[list[bytes]]) -> None:
        """Send on schedule; request i goes to node i mod nodes (raws[node][key] is the pre-built GET)."""
        loop = asyncio.get_running_loop()
        t0 = self._t0
        n = len(offsets)
        pools = self.pools
        nodes = len(pools)
        i = 0
        create = loop.create_task
        tasks = self._tasks
        while i < n:
            now = loop.time()
            due = t0 + offsets[i]
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while i < n and t0 + offsets[i] <= now:
                self.in_flight += 1
                node = i % nodes
                task = create(self._one(offsets[i], keys[i], raws[node][keys[i]], t0 + offsets[i], pools[node]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            self._sent = i
            await asyncio.sleep(0)

    def _start_clock(self, delay: float) -> None:
        """Fix offset 0 of the run a little in the future, so the first sends are not already late."""
        self._t0 = asyncio.get_running_loop().time() + delay
        self._start_wall = time.time() + delay
        self.clock_started.set()

    @property
    def start_wall(self) -> float:
        """Unix time of offset 0 (final once clock_started is set)."""
        return self._start_wall

    async def _wait_for_answers(self, notes: list[str]) -> None:
        if not self.in_flight:
            return
        assert self._all_done is not None
        self._all_done.clear()
        grace = self.cfg.timeout + 5
        try:
            await asyncio.wait_for(self._all_done.wait(), timeout=grace)
        except TimeoutError:
            notes.append(f"{self.in_flight} requests were unanswered {grace:g}s after the last send; counted as errors")
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _open_connections(self, count: int) -> list:
        """Open `count` connections (200 at a time, so the listen backlog keeps up) before the herd starts."""
        conns = []
        self.progress.show(f"opening {count} connections ...")
        for start in range(0, count, 200):
            batch = await asyncio.gather(
                *(self.pool.connect() for _ in range(min(200, count - start))), return_exceptions=True
            )
            for conn in batch:
                if isinstance(conn, BaseException):
                    self.error_kinds[f"connect_{type(conn).__name__}"] += 1
                else:
                    conns.append(conn)
        return conns

    async def _cold_herd(self, conns: list, herd_key: str) -> None:
        """Write one request for the never-seen key on every connection in one go, at offset 0."""
        loop = asyncio.get_running_loop()
        raw = build_get(self.pool.host_header, self._path(herd_key)).replace(
            b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"
        )
        await asyncio.sleep(max(0.0, self._t0 - loop.time()))
        intended = self._t0
        done_at: dict[int, float] = {}
        futs = []
        for i, conn in enumerate(conns):
            fut = conn.send(raw, self.cfg.timeout)
            fut.add_done_callback(lambda _f, i=i: done_at.__setitem__(i, loop.time()))
            futs.append(fut)
        self._last_send = loop.time()
        self._sent = len(futs)
        # the writes go out one after another; spread the measured write time over them as their lag
        step = (self._last_send - intended) / max(1, len(conns))
        results = await asyncio.gather(*futs, return_exceptions=True)
        for i, res in enumerate(results):
            latency = done_at.get(i, loop.time()) - intended
            if isinstance(res, BaseException):
                kind = res.kind if isinstance(res, HTTPClientError) else type(res).__name__
                self.error_kinds[kind] += 1
                self._record(0.0, latency, step * i, 0, None)
            else:
                self._record(0.0, latency, step * i, 0, res)
        for conn in conns:
            conn.abort()
        for _ in range(self.cfg.clients - len(conns)):  # connections that never opened
            self._record(0.0, 0.0, 0.0, 0, None)

    # ------------------------------------------------------------ sampling
    async def _sampler(self, stop: asyncio.Event, origin_cum: list, origin_all: list, depth: list) -> None:
        """Once a second: origin stats (cumulative) and queue depth, plus the progress line."""
        loop = asyncio.get_running_loop()
        prefix = self.keyspace.prefix
        k = 1
        while not stop.is_set():
            target = self._t0 + k
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, target - loop.time()))
                break
            except TimeoutError:
                pass
            stats, sample = await asyncio.gather(
                asyncio.to_thread(self.origin.try_stats, prefix), asyncio.to_thread(self.queue.sample)
            )
            origin_cum.append(None if stats is None else stats.prefixed)
            origin_all.append(None if stats is None else stats.total)
            q = sample.queue_depth
            depth.append(q)
            self._show_progress(k, origin_cum, q)
            k += 1

    def _show_progress(self, k: int, origin_cum: list, depth: float | None) -> None:
        sec = k - 1
        reqs = self._sec_requests.get(sec, 0)
        errs = sum(self._sec_errors.values())
        xs = {name: self._sec_x.get((sec, code), 0) for name, code in _CODE.items()}
        total = max(1, sum(xs.values()))
        mix = " ".join(f"{n} {100 * xs[n] / total:.0f}%" for n in ("HIT", "EARLY", "STALE", "MISS") if xs[n])
        origin = "?"
        if len(origin_cum) >= 2 and origin_cum[-1] is not None and origin_cum[-2] is not None:
            origin = str(origin_cum[-1] - origin_cum[-2])
        total_s = self.cfg.duration if self.cfg.scenario != "cold-herd" else self.cfg.timeout
        self.progress.show(
            f"t={k:>3}/{total_s:.0f}s sent={self._sent} req/s={reqs}"
            f" max={1000 * self._sec_latency_max.get(sec, 0):.0f}ms "
            f"{mix or '-'} errors={errs} origin/s={origin} queue={'?' if depth is None else f'{depth:.0f}'}"
            f" conns={sum(p.open_count for p in self.pools)}"
        )

    async def _outage(self, start: float, end: float, marks: dict) -> None:
        loop = asyncio.get_running_loop()
        prefix = self.keyspace.prefix
        await asyncio.sleep(max(0.0, self._t0 + start - loop.time()))
        before = await asyncio.to_thread(self.origin.try_stats, prefix)
        marks["start"] = loop.time() - self._t0
        await asyncio.to_thread(self.origin.configure, failure_rate=1.0)
        try:
            await asyncio.sleep(max(0.0, self._t0 + end - loop.time()))
        finally:
            await asyncio.to_thread(self.origin.configure, failure_rate=0.0)
            marks["end"] = loop.time() - self._t0
        after = await asyncio.to_thread(self.origin.try_stats, prefix)
        if before is not None and after is not None:
            marks["origin_calls"] = after.prefixed - before.prefixed
            marks["origin_calls_all_keys"] = after.total - before.total

    # ------------------------------------------------------------ main
    async def run(self) -> RunResult:
        """Run the scenario with the cyclic garbage collector paused.

        With thousands of requests in flight, one collection stalled the send loop for up
        to 300 ms on a saturated machine. A request that gets its answer leaves no reference
        cycles behind (measured: the garbage found after 3000 and after 10000 requests was the
        same ~270 objects), so pausing the collector costs no memory; it runs once at the end.
        """
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            return await self._run()
        finally:
            gc.enable()
            gc.unfreeze()
            gc.collect()

    async def _run(self) -> RunResult:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        prefix = self.keyspace.prefix
        before, lag_before = await asyncio.gather(
            asyncio.to_thread(self.origin.try_stats, prefix), asyncio.to_thread(self.queue.sample)
        )
        notes: list[str] = []
        if before is None:
            notes.append(f"origin stats unreadable at {cfg.origin_url}/stats: origin call figures missing")
        origin_cum: list[int | None] = [None if before is None else before.prefixed]
        origin_all: list[int | None] = [None if before is None else before.total]
        depth: list[float | None] = []
        stop = asyncio.Event()
        self._all_done = asyncio.Event()
        outage_marks: dict[str, float | int | None] = {}
        scheduled = 0

        if cfg.scenario == "cold-herd":
            key_names = [self.keyspace.herd_key()]
            scheduled = cfg.clients
            conns = await self._open_connections(cfg.clients)
            self._start_clock(delay=0.2)
            sampler_task = loop.create_task(self._sampler(stop, origin_cum, origin_all, depth))
            try:
                await self._cold_herd(conns, key_names[0])
                await asyncio.sleep(cfg.drain)
            finally:
                stop.set()
                await sampler_task
        else:
            offsets = arrival_offsets(cfg.rate, cfg.duration, cfg.arrivals, self.rng)
            keys = ZipfSampler(cfg.keys, cfg.zipf).samples(len(offsets), self.rng)
            key_names = self.keyspace.names()
            raws = [[build_get(pool.host_header, self._path(name)) for name in key_names] for pool in self.pools]
            scheduled = len(offsets)
            self._start_clock(delay=0.3)
            sampler_task = loop.create_task(self._sampler(stop, origin_cum, origin_all, depth))
            outage_task = None
            if cfg.scenario == "outage":
                outage_task = loop.create_task(self._outage(cfg.duration / 3, 2 * cfg.duration / 3, outage_marks))
            try:
                await self._send_schedule(offsets, keys, raws)
                await self._wait_for_answers(notes)
            finally:
                if outage_task is not None:
                    if not outage_task.done():
                        outage_task.cancel()
                    try:
                        await outage_task
                    except asyncio.CancelledError:
                        await asyncio.to_thread(self.origin.configure, failure_rate=0.0)
            await asyncio.sleep(cfg.drain)
            stop.set()
            await sampler_task
        elapsed = loop.time() - self._t0
        sent_elapsed = self._last_send - self._t0
        drain = await self._wait_until_idle()
        if not drain["complete"]:
            notes.append(
                f"the refresh queue and the origin were not idle {cfg.drain_timeout:g}s after the load stopped"
                f" (queue depth {drain['queue_depth']}, origin calls in flight {drain['origin_in_flight']}):"
                " refreshes still queued or running then are not in the origin call count"
            )
        after = await asyncio.to_thread(self.origin.try_stats, prefix)
        lag_after = await asyncio.to_thread(self.queue.sample)
        lag_buckets = bucket_delta(lag_after.refresh_lag_buckets, lag_before.refresh_lag_buckets)
        lag_p99 = histogram_quantile(0.99, lag_buckets)
        for pool in self.pools:
            pool.close()
        self.progress.show(
            f"done: {len(self.records)} responses in {elapsed:.1f}s, errors={sum(self.error_kinds.values())}",
            final=True,
        )
        seconds = max(1, math.ceil(cfg.duration)) if cfg.scenario != "cold-herd" else max(1, len(depth))
        per_second = [
            None if a is None or b is None else b - a for a, b in zip(origin_cum, origin_cum[1:], strict=False)
        ]
        per_second_all = [
            None if a is None or b is None else b - a for a, b in zip(origin_all, origin_all[1:], strict=False)
        ]
        origin_calls = None
        origin_calls_all = None
        per_key: dict[str, int] = {}
        if before is not None and after is not None:
            origin_calls = after.prefixed - before.prefixed
            origin_calls_all = after.total - before.total
            per_key = {k: v - before.per_key.get(k, 0) for k, v in after.per_key.items()}
        if self.max_age_seen is not None and self.max_age_seen > cfg.ttl + 1:
            notes.append(
                f"responses carried max-age up to {self.max_age_seen}s but the report assumes TTL"
                f" {cfg.ttl:g}s: "
                "start the stack with CACHE_TTL_SECONDS matching --ttl, or pass --ttl"
            )
        elif self.max_age_seen is not None and self.max_age_seen + 1 < cfg.ttl / 2 and len(self.records) > 100:
            notes.append(
                f"the largest max-age seen was {self.max_age_seen}s, well below the assumed TTL {cfg.ttl:g}s:"
                " is the stack's CACHE_TTL_SECONDS shorter than --ttl?"
            )
        outage = None
        if cfg.scenario == "outage":
            outage = {
                "start": outage_marks.get("start"),
                "end": outage_marks.get("end"),
                "origin_calls": outage_marks.get("origin_calls"),
                "origin_calls_all_keys": outage_marks.get("origin_calls_all_keys"),
            }
        return RunResult(
            config=cfg,
            run_id=self.run_id,
            key_prefix=prefix,
            started_at=self._start_wall,
            records=self.records,
            error_kinds=self.error_kinds,
            key_names=key_names,
            seconds=seconds,
            origin_calls_per_second=per_second,
            origin_total_per_second=per_second_all,
            queue_depth_per_second=depth,
            origin_calls=origin_calls,
            origin_cumulative=origin_cum,
            drain=drain,
            refresh_lag_p99_s=None if lag_p99 is None else round(lag_p99, 3),
            refresh_lag_buckets=lag_buckets,
            origin_max_in_flight=None if after is None else after.max_in_flight,
            origin_calls_all_keys=origin_calls_all,
            origin_per_key=per_key,
            scheduled=scheduled,
            sent_elapsed=sent_elapsed,
            elapsed=elapsed,
            peak_connections=sum(p.peak_open for p in self.pools),
            connects=sum(p.connects for p in self.pools),
            waited_for_connection=sum(p.waited for p in self.pools),
            max_age_seen=self.max_age_seen,
            outage=outage,
            notes=notes,
        )

    async def _wait_until_idle(self) -> dict:
        """After the load: wait until no refresh is queued and the origin serves no call, so the
        final origin count includes the refreshes the run caused (bounded by drain_timeout)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        depth: float | None = None
        in_flight: int | None = None
        while True:
            stats, sample = await asyncio.gather(
                asyncio.to_thread(self.origin.try_stats, self.keyspace.prefix), asyncio.to_thread(self.queue.sample)
            )
            depth = sample.queue_depth
            in_flight = None if stats is None else stats.in_flight
            idle = not depth and not in_flight
            if idle or loop.time() - start >= self.cfg.drain_timeout:
                break
            self.progress.show(f"draining: queue depth {depth}, origin calls in flight {in_flight}")
            await asyncio.sleep(0.25)
        return {
            "waited_s": round(loop.time() - start, 3),
            "complete": bool(idle),
            "queue_depth": depth,
            "origin_in_flight": in_flight,
            "timeout_s": self.cfg.drain_timeout,
        }


def run_blocking(config: RunConfig) -> RunResult:
    """Run one scenario in a fresh event loop (the CLI's entry point)."""
    return asyncio.run(OpenLoopRun(config).run())
