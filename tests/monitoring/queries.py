"""The dashboard's panel queries and the alert expressions, read from monitoring/, as plain PromQL."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "herdless.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards"

# The metric table of the contract (name -> type); histograms are queried through
# their _bucket, _sum and _count series.
CONTRACT_METRICS = {
    "herdless_requests_total": "counter",
    "herdless_request_duration_seconds": "histogram",
    "herdless_served_age_seconds": "histogram",
    "herdless_refresh_enqueued_total": "counter",
    "herdless_refresh_suppressed_total": "counter",
    "herdless_refresh_total": "counter",
    "herdless_origin_calls_total": "counter",
    "herdless_origin_bytes_total": "counter",
    "herdless_origin_duration_seconds": "histogram",
    "herdless_refresh_lag_seconds": "histogram",
    "herdless_origin_batch_keys": "histogram",
    "herdless_breaker_state": "gauge",
    "herdless_breaker_transitions_total": "counter",
    "herdless_queue_depth": "gauge",
    "herdless_origin_in_flight": "gauge",
    "herdless_origin_slot_wait_seconds": "histogram",
    "herdless_near_cache_total": "counter",
    "herdless_cold_wakeups_total": "counter",
    "herdless_near_cache_bytes": "gauge",
    "herdless_redis_degraded": "gauge",
    "herdless_degraded_answers_total": "counter",
    "herdless_refused_total": "counter",
    "herdless_group_purge_keys_total": "counter",
    "herdless_group_purges_total": "counter",
    "herdless_group_purge_pending_keys": "gauge",
}

# Flower 2.x exporter (flower/events.py, PrometheusMetrics).
FLOWER_METRICS = {
    "flower_events_total": "counter",
    "flower_task_runtime_seconds": "histogram",
    "flower_task_prefetch_time_seconds": "gauge",
    "flower_worker_prefetched_tasks": "gauge",
    "flower_worker_online": "gauge",
    "flower_worker_number_of_currently_executing_tasks": "gauge",
}

# Series Prometheus adds to every scrape target.
SCRAPE_METRICS = {"up": "gauge"}


def _series_names(metrics: dict[str, str]) -> set[str]:
    names = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        else:
            names.add(name)
    return names


KNOWN_SERIES = _series_names(CONTRACT_METRICS) | _series_names(FLOWER_METRICS) | _series_names(SCRAPE_METRICS)


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str  # as written in the dashboard, Grafana variables included
    datasource_uid: str | None


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dashboard: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, without the row panels themselves."""
    dashboard = dashboard or load_dashboard()
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def panel_queries(dashboard: dict[str, Any] | None = None) -> list[PanelQuery]:
    return [
        PanelQuery(
            panel=panel["title"],
            ref_id=target["refId"],
            expr=target["expr"],
            datasource_uid=(target.get("datasource") or {}).get("uid"),
        )
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[AlertRule]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [AlertRule(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"] if "alert" in rule]


def pinned_datasource_uid() -> str:
    """The uid of the provisioned Prometheus datasource (there must be exactly one)."""
    uids = [
        source["uid"]
        for path in sorted(DATASOURCES.glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text()).get("datasources", [])
        if source.get("type") == "prometheus"
    ]
    assert len(uids) == 1, f"expected one provisioned Prometheus datasource, found uids {uids}"
    return uids[0]


def to_promql(expr: str, rate_interval: str = "1m", time_range: str = "5m") -> str:
    """Replace the Grafana variables the dashboard uses by what Grafana would send."""
    promql = (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("$__range", time_range)
        .replace("$namespace", ".*")
    )
    leftover = re.findall(r"\$\w+", promql)
    assert not leftover, f"unknown Grafana variables {leftover} in {expr!r}"
    return promql


_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}  # fmt: skip


def metric_names(promql: str) -> set[str]:
    """Metric names a PromQL expression selects (a lexer good enough for our own queries)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)  # label values and regexes
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, is_call = match.group(1), match.group(2)
        if is_call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names
