"""What the load test reads from the stack besides responses: origin stats, worker metrics, process RSS.

All calls are blocking and small; the generator runs them in a thread once a
second so they never hold up the request schedule.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil
from prometheus_client.parser import text_string_to_metric_families

from shared.metrics import histogram_quantile as shared_histogram_quantile

QUEUE_DEPTH = "herdless_queue_depth"  # gauge, label `queue`: refresh tasks waiting in the broker
REFRESH_LAG = "herdless_refresh_lag_seconds"  # histogram: lease won -> value written (queue wait included)


@dataclass(frozen=True)
class OriginCalls:
    total: int
    prefixed: int
    per_key: dict[str, int]
    in_flight: int | None = None  # /items calls being served now (None: an origin without the field)
    max_in_flight: int | None = None  # the most at once since start or the last /stats/reset


class OriginProbe:
    """Reads and drives the demo origin: GET /stats, POST /stats/reset, PUT /config (see demo_origin/server.py)."""

    def __init__(self, base_url: str, timeout: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def stats(self, prefix: str) -> OriginCalls:
        with urllib.request.urlopen(f"{self.base_url}/stats", timeout=self.timeout) as resp:
            data = json.loads(resp.read())
        per_key = {k: int(v) for k, v in (data.get("per_key") or {}).items() if k.startswith(prefix)}
        in_flight = data.get("in_flight")
        peak = data.get("max_in_flight")
        return OriginCalls(
            int(data.get("calls", 0)),
            sum(per_key.values()),
            per_key,
            None if in_flight is None else int(in_flight),
            None if peak is None else int(peak),
        )

    def try_stats(self, prefix: str) -> OriginCalls | None:
        try:
            return self.stats(prefix)
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.base_url}/stats/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            resp.read()

    def configure(self, **settings: float) -> None:
        req = urllib.request.Request(
            f"{self.base_url}/config",
            data=json.dumps(settings).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            resp.read()


# ---------------------------------------------------------------- Prometheus pages


@dataclass(frozen=True)
class MetricsSample:
    """What one scrape told: queue depth (None: no page served it) and the refresh-lag histogram."""

    queue_depth: float | None
    # cumulative (upper bound, count) pairs of herdless_refresh_lag_seconds summed over labels; [] if absent
    refresh_lag_buckets: list[tuple[float, float]] = field(default_factory=list)


def _families(metrics_text: str) -> dict:
    try:
        return {f.name: f for f in text_string_to_metric_families(metrics_text)}
    except (ValueError, TypeError, IndexError):
        return {}


def parse_queue_depth(metrics_text: str) -> float | None:
    """Sum of every herdless_queue_depth sample in a Prometheus text page, None if absent."""
    family = _families(metrics_text).get(QUEUE_DEPTH)
    if family is None:
        return None
    # a declared gauge with no queue sample yet: nothing is queued
    return float(sum(s.value for s in family.samples if not math.isnan(s.value)))


def parse_histogram_buckets(metrics_text: str, name: str = REFRESH_LAG) -> list[tuple[float, float]]:
    """Cumulative (le, count) of histogram `name`, summed over its label sets, sorted by le."""
    family = _families(metrics_text).get(name)
    if family is None:
        return []
    totals: dict[float, float] = {}
    for sample in family.samples:
        if sample.name == f"{name}_bucket":
            le = float(sample.labels["le"])
            totals[le] = totals.get(le, 0.0) + sample.value
    return sorted(totals.items())


Buckets = Sequence[tuple[float, float]]


def bucket_delta(after: Buckets, before: Buckets) -> list[tuple[float, float]]:
    """Per-bucket counts observed between two scrapes of the same cumulative histogram."""
    earlier = dict(before)
    return [(le, count - earlier.get(le, 0.0)) for le, count in after]


histogram_quantile = shared_histogram_quantile


def quantile_bucket(q: float, buckets: Buckets) -> tuple[float, float] | None:
    """The (lower, upper) bounds of the bucket holding quantile q: how coarse histogram_quantile's estimate is."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower = 0.0
    for le, count in buckets:
        if count >= rank:
            return (lower, le)
        lower = le
    return (lower, math.inf)


class MetricsProbe:
    """Scrapes the stack's Prometheus pages: queue depth from the first that serves it (web and
    worker read the same broker queue), the refresh-lag histogram from the first that has samples."""

    def __init__(self, urls: list[str], timeout: float = 1.0) -> None:
        self.urls = urls
        self.timeout = timeout

    def sample(self) -> MetricsSample:
        depth: float | None = None
        lag: list[tuple[float, float]] = []
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                    text = resp.read().decode("utf-8", "replace")
            except (OSError, urllib.error.URLError):
                continue
            if depth is None:
                depth = parse_queue_depth(text)
            if not lag:
                lag = parse_histogram_buckets(text)
            if depth is not None and lag:
                break
        return MetricsSample(depth, lag)

    def read(self) -> float | None:
        return self.sample().queue_depth


QueueDepthProbe = MetricsProbe  # the name the generator used before it read the refresh lag too


# ---------------------------------------------------------------- processes


def pids_listening_on(port: int) -> set[int]:
    """Processes holding a listening socket on `port` (a gunicorn master and its workers share one)."""
    found: set[int] = set()
    for proc in psutil.process_iter(["pid"]):
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    found.add(proc.pid)
                    break
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def parent_of(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def with_descendants(pids: set[int]) -> set[int]:
    """`pids` plus every process below them (gunicorn workers, Celery prefork children)."""
    result = set(pids)
    for pid in pids:
        try:
            result.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            continue
    return result


def rss_bytes(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def command_line(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()) or "?"
    except psutil.Error:
        return "?"


def stack_processes(ports: dict[str, int], extra_pids: list[int]) -> dict[int, str]:
    """pid -> role for every process of the stack found by its listening port (plus children)."""
    roles: dict[int, str] = {}
    for role, port in ports.items():
        for pid in sorted(with_descendants(pids_listening_on(port))):
            roles.setdefault(pid, role)
    for pid in extra_pids:
        roles.setdefault(pid, "given")
    return roles
