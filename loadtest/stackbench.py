"""Benches that start their own stacks: the XFETCH_BETA sweep and herdless vs nginx proxy_cache (1 and 2 nodes).

Both run the steady open-loop workload of `python -m loadtest run` and report the
same steady-state columns (see summary.steady_state).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from loadtest.launcher import LocalStack, NginxNode
from loadtest.openloop import RunConfig, run_blocking
from loadtest.summary import summarize


def steady_row(label: str, summary: dict[str, Any]) -> dict[str, Any]:
    st = summary.get("steady") or {}
    return {
        "label": label,
        "calls_per_key_window": st.get("calls_per_key_window"),
        "hot_fresh_share": st.get("hot_fresh_share"),
        "fresh_share": st.get("fresh_share"),
        "p99_ms": st.get("latency_p99_ms"),
        "served_age_p99_s": st.get("served_age_p99_s"),
        "throughput_rps": st.get("throughput_rps"),
        "errors": summary["errors"]["total"],
        "miss_for_served_key": st.get("miss_for_served_key"),
        "worker_saturated": (summary.get("worker") or {}).get("saturated"),
    }


def run_betasweep(
    base: RunConfig, betas: list[float], stack_env: dict[str, str], progress: Callable[[str], None] = print
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same workload against a fresh stack per beta: (rows, full summaries)."""
    rows, summaries = [], []
    for beta in betas:
        env = {**stack_env, "CACHE_TTL_SECONDS": f"{base.ttl:g}", "XFETCH_BETA": f"{beta:g}"}
        with LocalStack(env=env) as stack:
            cfg = dataclasses.replace(
                base,
                url=stack.web_urls[0],
                origin_url=stack.origin_url,
                metrics_urls=stack.metrics_urls,
                label=f"beta-{beta:g}",
            )
            summary = summarize(run_blocking(cfg))
        summaries.append(summary)
        rows.append({"beta": beta, **steady_row(cfg.label, summary)})
        progress(beta_line(rows[-1]))
    return rows, summaries


def beta_line(row: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    return (
        f"beta {row['beta']:g}: calls/key/TTL window {row['calls_per_key_window']}, hot fresh"
        f" {pct(row['hot_fresh_share'])}, fresh {pct(row['fresh_share'])}, p99 {row['p99_ms']} ms, served age p99"
        f" {row['served_age_p99_s']} s, errors {row['errors']}"
        + (", worker SATURATED" if row["worker_saturated"] else "")
    )


def nginx_available() -> bool:
    return bool(shutil.which("nginx") or Path("/usr/sbin/nginx").exists())


def run_with_nginx(
    base: RunConfig,
    stack_env: dict[str, str],
    namespace: str,
    *,
    proxy_mount: str | None = None,
    origin_cache_control: str | None = None,
) -> list[dict[str, Any]]:
    """herdless (1 and 2 web nodes on one Redis) and nginx proxy_cache (1 and 2 nodes, separate caches)
    before the same demo origin, the same workload each: the run summaries in that order.

    proxy_mount: `namespace` is a proxy namespace served there, and herdless reads the origin's
    /items/<key> through it, as nginx does; origin_cache_control: the Cache-Control the demo origin
    sends for every run (both caches then take the value's freshness from it)."""
    env = {**stack_env, "CACHE_TTL_SECONDS": f"{base.ttl:g}"}
    summaries = []
    with LocalStack(env=env, web_nodes=2) as stack:
        web1, web2 = stack.web_urls
        common = {"origin_url": stack.origin_url}
        herdless: dict[str, Any] = {**common, "namespace": namespace, "metrics_urls": stack.metrics_urls}
        if proxy_mount is not None:
            herdless.update(path_style="proxy", proxy_mount=proxy_mount)
        if origin_cache_control is not None:
            config = requests.put(stack.origin_url + "/config", json={"cache_control": origin_cache_control}, timeout=5)
            config.raise_for_status()
        runs: list[tuple[str, dict[str, Any]]] = [
            ("herdless-1node", {**herdless, "url": web1}),
            ("herdless-2nodes", {**herdless, "url": web1, "extra_urls": [web2]}),
        ]
        with NginxNode(stack.origin_port, base.ttl) as n1, NginxNode(stack.origin_port, base.ttl) as n2:
            nginx = {**common, "metrics_urls": [], "path_style": "origin", "x_cache_dialect": "nginx"}
            runs += [
                ("nginx-1node", {**nginx, "url": n1.url}),
                ("nginx-2nodes", {**nginx, "url": n1.url, "extra_urls": [n2.url]}),
            ]
            for label, fields in runs:
                cfg = dataclasses.replace(base, label=label, **fields)
                summaries.append(summarize(run_blocking(cfg)))
    return summaries
