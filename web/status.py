"""The status page at `/`: the stampede story (request mix, fresh share, served age, near-cache,
origin calls and slots, refreshes, queue depth, breaker state, and each namespace's last minute)
live, for someone running `make run` without Grafana.

The page is public, so it names an origin only by the namespaces that use it: an origin's host
and port (or module and function) are for the admin's GET /v1/namespaces."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from importlib import resources
from typing import Any

import urllib3
from flask import Blueprint, Response
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError

from shared import rates
from shared.exposition import origin_labels
from shared.keys import Keyspace
from shared.metrics import histogram_quantile as shared_histogram_quantile
from shared.protocol import BreakerState
from web.http import json_response
from web.state import web_state

bp = Blueprint("status", __name__)

_http = urllib3.PoolManager(num_pools=2, maxsize=2, retries=False)


def _web_samples() -> list[Any]:
    registry = web_state().metrics_registry
    return [s for family in registry.collect() for s in family.samples]


def _worker_samples(url: str) -> list[Any] | None:
    try:
        resp = _http.request("GET", url, timeout=urllib3.Timeout(connect=0.5, read=2.0))
    except urllib3.exceptions.HTTPError:
        return None
    if resp.status != 200:
        return None
    text = resp.data.decode("utf-8", "replace")
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _by_label(samples: list[Any], name: str, label: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for sample in samples:
        if sample.name == name:
            totals[sample.labels.get(label, "")] += sample.value
    return dict(totals)


def _total(samples: list[Any], name: str) -> float:
    return sum(sample.value for sample in samples if sample.name == name)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram from its cumulative (upper bound, count) buckets, as
    Prometheus's histogram_quantile estimates it (shared.metrics); None without a +Inf bucket."""
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        return None
    return shared_histogram_quantile(q, ordered)


def _buckets(samples: list[Any], name: str, **labels: str) -> dict[float, float]:
    """Cumulative counts by upper bound of histogram `name`, summed over the other labels."""
    totals: dict[float, float] = defaultdict(float)
    for sample in samples:
        if sample.name == f"{name}_bucket" and all(sample.labels.get(k) == v for k, v in labels.items()):
            totals[float(sample.labels["le"])] += sample.value
    return dict(totals)


def _slot_waits(worker: list[Any]) -> dict[str, dict[str, float | None]]:
    name = "herdless_origin_slot_wait_seconds"
    waits = _by_label(worker, f"{name}_count", "origin")
    seconds = _by_label(worker, f"{name}_sum", "origin")
    return {
        origin: {
            "waits": n,
            "mean_seconds": seconds.get(origin, 0.0) / n if n else None,
            "p99_seconds": histogram_quantile(0.99, _buckets(worker, name, origin=origin).items()),
        }
        for origin, n in waits.items()
    }


_BREAKER_BY_GAUGE = {state.gauge: state.value for state in BreakerState}


def _last_minute(
    client: Any, namespaces: Iterable[str], keys: Keyspace, ttls: dict[str, float]
) -> dict[str, Any] | None:
    try:
        return {name: r.as_json() for name, r in rates.last_minute(client, namespaces, keys, ttls).items()}
    except RedisError:
        return None


def status_snapshot() -> dict[str, Any]:
    state = web_state()
    labels = origin_labels(state.namespaces.values())
    web = _web_samples()
    requests_by_outcome = _by_label(web, "herdless_requests_total", "outcome")
    requests_total = sum(requests_by_outcome.values())
    fresh = requests_by_outcome.get("hit", 0.0) + requests_by_outcome.get("early", 0.0)
    # The limit an acquirer checks is its namespace's; in flight never passes the largest of them.
    # Both tiers' /metrics name origins by `labels` already (shared/exposition.py).
    limits: dict[str, int] = {}
    for ns in state.namespaces.values():
        name = labels[ns.origin_name]
        limits[name] = max(limits.get(name, 0), ns.origin_max_concurrency)
    snapshot: dict[str, Any] = {
        "requests": requests_by_outcome,
        "requests_total": requests_total,
        # Over every answer since the web tier started; a 304 (not_modified) may confirm a stale
        # value, so it does not count as fresh.
        "fresh_share": fresh / requests_total if requests_total else None,
        "served_age_p99_seconds": histogram_quantile(0.99, _buckets(web, "herdless_served_age_seconds").items()),
        "near_cache": _by_label(web, "herdless_near_cache_total", "result"),
        "near_cache_bytes": _total(web, "herdless_near_cache_bytes"),
        # Web processes that find Redis unreachable and answer from memory (degraded mode).
        "redis_degraded_processes": _total(web, "herdless_redis_degraded"),
        "degraded_answers": _by_label(web, "herdless_degraded_answers_total", "answer"),
        # Read from the Redis semaphore at this moment, like queue depth.
        "origin_in_flight": _by_label(web, "herdless_origin_in_flight", "origin"),
        "origin_limits": limits,
        "refresh_enqueued": _by_label(web, "herdless_refresh_enqueued_total", "reason"),
        "refresh_suppressed": _by_label(web, "herdless_refresh_suppressed_total", "reason"),
        # Read from the broker and Redis at this moment, so they show even with no worker running.
        "queue_depth": sum(_by_label(web, "herdless_queue_depth", "queue").values()),
        "breakers": {
            origin: _BREAKER_BY_GAUGE.get(int(v), "unknown")
            for origin, v in _by_label(web, "herdless_breaker_state", "origin").items()
        },
        # Per namespace, over the last 60 s, from every web and worker process (shared/rates.py);
        # None while Redis is unreachable.
        "last_minute": _last_minute(
            state.store.redis,
            sorted(state.namespaces),
            state.store.keys,
            {name: ns.cache_ttl_seconds for name, ns in state.namespaces.items()},
        ),
        "worker": None,
    }
    worker = _worker_samples(state.settings.worker_metrics_url)
    if worker is not None:
        origin_calls = _by_label(worker, "herdless_origin_calls_total", "outcome")
        snapshot["worker"] = {
            "origin_calls": origin_calls,
            "origin_calls_total": sum(origin_calls.values()),
            # Value bodies received; a 304 revalidation (origin_calls "not_modified") adds none.
            "origin_bytes_total": _total(worker, "herdless_origin_bytes_total"),
            "refreshes": _by_label(worker, "herdless_refresh_total", "outcome"),
            "slot_waits": _slot_waits(worker),
            # Lease won to value written, summed over namespaces: the page charts its mean per interval.
            "refresh_lag_seconds": {
                "sum": _total(worker, "herdless_refresh_lag_seconds_sum"),
                "count": _total(worker, "herdless_refresh_lag_seconds_count"),
            },
        }
    return snapshot


@bp.get("/status.json")
def status_json() -> Response:
    return json_response(200, status_snapshot())


@bp.get("/")
def status_page() -> Response:
    html = resources.files("web").joinpath("status.html").read_text(encoding="utf-8")
    return Response(html, content_type="text/html; charset=utf-8")
