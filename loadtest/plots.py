"""PNG figures for a report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

X_CACHE_COLORS = {
    "HIT": "#2ca02c",
    "EARLY": "#17becf",
    "STALE": "#ff7f0e",
    "MISS": "#d62728",
    "NEGATIVE": "#7f7f7f",
}
STRATEGY_COLORS = ["#d62728", "#9467bd", "#ff7f0e", "#2ca02c", "#1f77b4", "#8c564b"]


def _value_scale(ax: Any, values: list[float], axis: str = "y") -> None:
    """Log scale only when the values span more than ~1.5 decades; plain numbers on the ticks either way."""
    positive = [v for v in values if v and v > 0]
    if len(positive) >= 2 and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_ylim(bottom=0, top=max(positive, default=1) * 1.15)


def _shade_outage(ax: Any, summary: dict[str, Any]) -> None:
    outage = summary.get("outage")
    if outage:
        ax.axvspan(outage["start_s"], outage["end_s"], color="#d62728", alpha=0.08, label="origin down")


def _title(summary: dict[str, Any], what: str) -> str:
    run = summary["run"]
    return f"{what} — {run['label']} ({run['scenario']}, {run['rate']:g} req/s, TTL {run['ttl_s']:g}s)"


def latency_figure(summary: dict[str, Any], path: Path) -> Path:
    ps = summary["per_second"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, style in (("p50", "-"), ("p90", "-"), ("p99", "-"), ("max", ":")):
        values = [float("nan") if v is None else v for v in ps["latency_ms"][name]]
        ax.plot(ps["t"], values, style, label=name, linewidth=1.4)
    _shade_outage(ax, summary)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("seconds since start (by intended send time)")
    ax.set_ylabel("latency from intended send, ms")
    ax.set_title(_title(summary, "Latency percentiles per second"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def xcache_figure(summary: dict[str, Any], path: Path) -> Path:
    ps = summary["per_second"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [n for n in X_CACHE_COLORS if n in ps["x_cache"]]
    series = [ps["x_cache"][n] for n in names]
    if series:
        ax.stackplot(ps["t"], *series, labels=names, colors=[X_CACHE_COLORS[n] for n in names], alpha=0.85)
    if any(ps["errors"]):
        ax.plot(ps["t"], ps["errors"], color="black", linewidth=1.5, label="errors")
    _shade_outage(ax, summary)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("responses per second")
    ax.set_title(_title(summary, "X-Cache mix per second"))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def origin_figure(summary: dict[str, Any], path: Path) -> Path:
    ps = summary["per_second"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    origin = [float("nan") if v is None else v for v in ps["origin_calls"]]
    ax.plot(ps["t"], origin, color="#d62728", linewidth=1.6, label="origin calls/s")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("origin calls per second", color="#d62728")
    ax.set_ylim(bottom=0, top=max([v for v in origin if v == v] + [1]) * 1.15)
    ax2 = ax.twinx()
    ax2.plot(ps["t"], ps["requests"], color="#1f77b4", linewidth=1.0, alpha=0.7, label="requests/s")
    depth = ps.get("queue_depth") or []
    if any(d for d in depth if d is not None):
        ax2.plot(
            ps["t"],
            [float("nan") if d is None else d for d in depth],
            color="#7f7f7f",
            linewidth=1.0,
            label="queue",
        )
    ax2.set_ylabel("requests per second (blue), queue depth (grey)")
    ax2.set_ylim(bottom=0)
    _shade_outage(ax, summary)
    per_window = summary["origin"]["calls_per_key_window"]
    ax.set_title(
        _title(summary, "Origin calls vs request rate") + f"\norigin calls per key per TTL window:"
        f" {per_window if per_window is not None else 'n/a'} (minimum 1)"
    )
    ax.grid(True, alpha=0.3)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_figures(summary: dict[str, Any], directory: Path, stem: str = "") -> dict[str, str]:
    prefix = f"{stem}-" if stem else ""
    return {
        "latency": latency_figure(summary, directory / f"{prefix}latency.png").name,
        "x_cache": xcache_figure(summary, directory / f"{prefix}xcache.png").name,
        "origin": origin_figure(summary, directory / f"{prefix}origin.png").name,
    }


def compare_figure(summaries: list[dict[str, Any]], path: Path) -> Path:
    """Strategies side by side: the key figure, p99, errors, and p99 over time."""
    labels = [
        f"{s['run']['strategy']}\n{s['run']['label']}" if s["run"].get("strategy") else s["run"]["label"]
        for s in summaries
    ]
    colors = [STRATEGY_COLORS[i % len(STRATEGY_COLORS)] for i in range(len(summaries))]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ideal = [(s.get("steady") or {}).get("calls_per_ideal_refresh") or 0.0 for s in summaries]
    ax = axes[0][0]
    bars = ax.bar(labels, ideal, color=colors)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="ideal cache (1.0 = ideal)")
    ax.bar_label(bars, fmt="%.2f")
    _value_scale(ax, ideal + [1.0])
    ax.set_title("origin calls after warm-up / the ideal cache's (closer to 1 is better)")
    ax.legend(fontsize="small")

    ax = axes[0][1]
    p99 = [s["latency_ms"].get("p99", 0.0) for s in summaries]
    bars = ax.bar(labels, p99, color=colors)
    ax.bar_label(bars, fmt="%.1f")
    _value_scale(ax, p99)
    ax.set_title("p99 latency, ms (from intended send time)")

    ax = axes[1][0]
    calls = [s["origin"]["calls"] or 0 for s in summaries]
    errors = [s["errors"]["total"] for s in summaries]
    x = range(len(labels))
    width = 0.4
    b1 = ax.bar([i - width / 2 for i in x], calls, width, label="origin calls", color="#1f77b4")
    b2 = ax.bar([i + width / 2 for i in x], errors, width, label="errors", color="#d62728")
    ax.bar_label(b1, fmt="%d", fontsize="small")
    ax.bar_label(b2, fmt="%d", fontsize="small")
    ax.set_xticks(list(x), labels)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_title("origin calls and errors (whole run)")
    ax.legend(fontsize="small")

    ax = axes[1][1]
    for s, color in zip(summaries, colors, strict=True):
        ps = s["per_second"]
        ax.plot(
            ps["t"],
            [float("nan") if v is None else v for v in ps["latency_ms"]["p99"]],
            color=color,
            label=s["run"]["label"],
        )
    _value_scale(ax, [v for s in summaries for v in s["per_second"]["latency_ms"]["p99"] if v is not None])
    ax.set_xlabel("seconds since start")
    ax.set_title("p99 latency per second, ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")

    first = summaries[0]["run"]
    fig.suptitle(
        f"Strategies compared — {first['scenario']}, {first['rate']:g} req/s, {first['duration_s']:g}s, "
        f"{first['keys']} keys, Zipf {first['zipf']:g}, TTL {first['ttl_s']:g}s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def betasweep_figure(rows: list[dict[str, Any]], path: Path) -> Path:
    """Origin cost (calls per key per TTL window) against hot-key fresh share, one point per XFETCH_BETA."""
    fig, ax = plt.subplots(figsize=(8, 5))
    points = [(r["beta"], r["calls_per_key_window"], r["hot_fresh_share"]) for r in rows]
    xs = [x for _, x, y in points if x is not None and y is not None]
    ys = [100 * y for _, x, y in points if x is not None and y is not None]
    ax.plot(xs, ys, "-", color="#1f77b4", alpha=0.4)
    for beta, x, y in points:
        if x is None or y is None:
            continue
        ax.plot([x], [100 * y], "o", color="#1f77b4")
        ax.annotate(f"β={beta:g}", (x, 100 * y), textcoords="offset points", xytext=(6, 4))
    ax.axvline(1.0, color="#7f7f7f", linestyle=":", linewidth=1, label="1 call per key per TTL window")
    ax.set_xlabel("origin calls per key per TTL window (after warm-up, drained)")
    ax.set_ylabel("hot-key answers that were fresh (HIT + EARLY), %")
    ax.set_title("XFETCH_BETA: origin cost vs fresh hot-key answers")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
