"""The status page at `/`: the stampede story (request mix, origin calls, refreshes, queue depth,
breaker state) live, for someone running `make run` without Grafana."""

from __future__ import annotations

from collections import defaultdict
from importlib import resources
from typing import Any

import urllib3
from flask import Blueprint, Response
from prometheus_client.parser import text_string_to_metric_families

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


def status_snapshot() -> dict[str, Any]:
    settings = web_state().settings
    web = _web_samples()
    requests_by_outcome = _by_label(web, "herdless_requests_total", "outcome")
    snapshot: dict[str, Any] = {
        "requests": requests_by_outcome,
        "requests_total": sum(requests_by_outcome.values()),
        "refresh_enqueued": _by_label(web, "herdless_refresh_enqueued_total", "reason"),
        "refresh_suppressed": _by_label(web, "herdless_refresh_suppressed_total", "reason"),
        # Read from the broker and Redis at this moment, so they show even with no worker running.
        "queue_depth": sum(_by_label(web, "herdless_queue_depth", "queue").values()),
        "breakers": {
            origin: {0: "closed", 1: "half-open", 2: "open"}.get(int(v), "unknown")
            for origin, v in _by_label(web, "herdless_breaker_state", "origin").items()
        },
        "worker": None,
    }
    worker = _worker_samples(settings.worker_metrics_url)
    if worker is not None:
        origin_calls = _by_label(worker, "herdless_origin_calls_total", "outcome")
        snapshot["worker"] = {
            "origin_calls": origin_calls,
            "origin_calls_total": sum(origin_calls.values()),
            "refreshes": _by_label(worker, "herdless_refresh_total", "outcome"),
        }
    return snapshot


@bp.get("/status.json")
def status_json() -> Response:
    return json_response(200, status_snapshot())


@bp.get("/")
def status_page() -> Response:
    html = resources.files("web").joinpath("status.html").read_text(encoding="utf-8")
    return Response(html, content_type="text/html; charset=utf-8")
