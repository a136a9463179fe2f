"""Writes a run's or a comparison's report.md, report.json and figures into loadtest/results/<timestamp>/."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.plots import compare_figure, run_figures
from loadtest.summary import fmt
from loadtest.verdict import flags, problem_lines, verdict_line

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def new_results_dir(base: Path | None = None, name: str = "") -> Path:
    base = RESULTS_DIR if base is None else base
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    directory = base / (f"{stamp}-{name}" if name else stamp)
    n = 1
    while directory.exists():
        n += 1
        directory = base / f"{stamp}-{name}-{n}" if name else base / f"{stamp}-{n}"
    directory.mkdir(parents=True)
    return directory


def command_line() -> str:
    return "python -m loadtest " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _latency_row(lat: dict[str, Any]) -> str:
    return " | ".join(fmt(lat.get(k), 2) for k in ("p50", "p90", "p99", "p99.9", "max"))


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def worker_word(summary: dict[str, Any]) -> str:
    worker = summary.get("worker") or {}
    saturated = worker.get("saturated")
    return "n/a" if saturated is None else ("SATURATED" if saturated else "ok")


def steady_lines(summary: dict[str, Any]) -> list[str]:
    """The steady-state figures, printed beside the calls-per-key-window figure wherever it appears."""
    st = summary.get("steady")
    if not st:
        return []
    worker = summary.get("worker") or {}
    drain = st["drain"]
    lines = [
        f"## Steady state (after {st['from_s']:g}s of warm-up, {st['seconds']:g}s counted)",
        "",
        f"- **Origin calls per key per TTL window: {fmt(st['calls_per_key_window'], 3)}** —"
        f" {fmt(st['origin_calls'])} calls for {st['key_windows']} (key, TTL window) pairs",
        f"- **Fresh answers (HIT + EARLY): {pct(st['fresh_share'])}** of {st['answers']};"
        f" on hot keys (≥ {st['hot_key_rps']:g} reads/s, {st['hot_keys']} keys): **{pct(st['hot_fresh_share'])}**",
        f"- Served age p99: {fmt(st['served_age_p99_s'], 2)} s; throughput {fmt(st['throughput_rps'])} req/s"
        f" at p99 {fmt(st['latency_p99_ms'], 2)} ms",
        f"- Errors: {st['errors']}; MISS for a key already served in this run: {st['miss_for_served_key']}",
        f"- Origin calls counted after the drain: waited {fmt(drain.get('waited_s'), 2)} s for queue depth 0 and"
        f" no origin call in flight ({'reached' if drain.get('complete') else 'NOT reached'}). Excluded:"
        f" {st['excluded']}.",
        f"- Refresh worker: {worker_word(summary)}"
        + (f" ({'; '.join(worker['reasons'])})" if worker.get("reasons") else "")
        + f"; queue non-empty in {pct(worker.get('queue_busy_share'))} of samples,"
        f" refresh lag p99 {fmt(worker.get('refresh_lag_p99_s'), 2)} s",
        "",
    ]
    return lines


def run_markdown(summary: dict[str, Any], figures: dict[str, str], command: str) -> str:
    run = summary["run"]
    gen = summary["generator"]
    origin = summary["origin"]
    lines = [
        f"# herdless load test — {run['label']}, scenario `{run['scenario']}`",
        "",
        f"`{command}`",
        "",
        f"- Started {run['started_at']} against `{run['url']}` (namespace `{run['namespace']}`),"
        f" origin `{run['origin_url']}`; keys `{run['key_prefix']}*`",
        f"- Machine: {run['machine']}",
    ]
    if run["scenario"] == "cold-herd":
        lines.append(f"- {run['clients']} clients, one never-seen key, all sent at the same instant")
    else:
        lines.append(
            f"- {run['arrivals']} arrivals at {run['rate']:g} req/s for {run['duration_s']:g}s,"
            f" {run['keys']} keys,"
            f" Zipf {run['zipf']:g}"
        )
    ttl_line = f"- TTL assumed {run['ttl_s']:g}s (`--ttl`; the stack must run with `CACHE_TTL_SECONDS` = this)"
    if run.get("max_age_seen_s") is not None:
        ttl_line += f"; largest `max-age` seen in responses: {run['max_age_seen_s']}s"
    lines += [ttl_line, ""]

    lines += [
        "## Key figure",
        "",
        f"**Origin calls per key per TTL window: {fmt(origin['calls_per_key_window'], 3)}** "
        f"(1.0 = one call per requested key and TTL window) — {fmt(origin['calls'])} origin calls for "
        f"{origin['key_windows']} requested (key, TTL window) pairs.",
        "",
        *steady_lines(summary),
        "## Results",
        "",
        "| | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---|---|---|---|---|",
        f"| all requests | {_latency_row(summary['latency_ms'])} |",
        f"| after warm-up ({run['warmup_s']:g}s) | {_latency_row(summary['latency_after_warmup_ms'])} |",
        "",
        "Latency is measured from each request's intended send time (open loop, no coordinated omission).",
        "",
        f"- Requests: {gen['completed']} of {gen['scheduled']} scheduled"
        + (
            f"; offered {gen['offered_rate']} req/s, achieved {gen['achieved_rate']} req/s"
            if gen["offered_rate"]
            else ""
        ),
        f"- Errors: {summary['errors']['total']} (after warm-up {summary['errors']['after_warmup']})"
        + (f", by kind {summary['errors']['by_kind']}" if summary["errors"]["by_kind"] else ""),
        f"- X-Cache: {summary['x_cache']}; MISS after warm-up: {summary['miss_after_warmup']}",
        f"- HTTP status: {summary['status']}",
        f"- Origin calls: {fmt(origin['calls'])} for this run's keys"
        f" ({fmt(origin['calls_all_keys'])} in total at the"
        " origin during the run)",
        f"- Largest queue depth seen: {fmt(summary['queue_depth_max'])}",
        f"- Generator: send lag p50 {fmt(gen['send_lag_ms']['p50'], 2)} ms, p99"
        f" {fmt(gen['send_lag_ms']['p99'], 2)}"
        f" ms, max {fmt(gen['send_lag_ms']['max'], 2)} ms; {gen['late_sends']} sends more than"
        f" {gen['late_threshold_ms']:g} ms late; kept schedule:"
        f" **{'yes' if gen['kept_schedule'] else 'NO'}**;"
        f" niceness {gen.get('niceness', 0)}; peak connections {gen['peak_connections']} of {gen['max_connections']}"
        + (
            f"; {gen['waited_for_connection']} requests waited for a free connection (server saturated; the wait"
            " counts in their latency)"
            if gen["waited_for_connection"]
            else ""
        ),
    ]
    herd = summary.get("cold_herd")
    if herd:
        lines += [
            "",
            "## Cold herd",
            "",
            f"{herd['clients']} clients asked for `{herd['key']}` at once:"
            f" **{fmt(herd['origin_calls'])} origin"
            f" call(s)**, {herd['ok']} answered, {herd['errors']} errors; the writes to all connections took"
            f" {fmt(herd['write_spread_ms'], 2)} ms.",
        ]
    outage = summary.get("outage")
    if outage:
        lines += [
            "",
            "## Outage",
            "",
            f"The origin failed every call from {outage['start_s']}s to {outage['end_s']}s.",
            "",
            f"- Errors on keys warm before the outage (during and after it): "
            f"**{outage['errors_on_warm_keys_during_and_after']}** of"
            f" {outage['requests_on_warm_keys_during_and_after']} requests ({outage['warm_keys']} warm keys)",
            f"- Errors on keys not yet warm: {outage['errors_on_cold_keys_during_and_after']}",
            f"- Errors before / during / after: {outage['errors_before']} / {outage['errors_during']} /"
            f" {outage['errors_after']}",
            f"- Origin calls during the outage: {fmt(outage['origin_calls_during'])}"
            f" ({fmt(outage['origin_calls_per_second_during'], 2)}/s)",
        ]
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    lines += ["", "## Figures", ""]
    for title, key in (
        ("Latency percentiles over time", "latency"),
        ("X-Cache mix over time", "x_cache"),
        ("Origin calls vs request rate", "origin"),
    ):
        lines += [f"![{title}]({figures[key]})", ""]
    return "\n".join(lines)


def write_run_report(summary: dict[str, Any], directory: Path, command: str | None = None) -> Path:
    command = command or command_line()
    figures = run_figures(summary, directory)
    summary = dict(summary, figures=figures, command=command)
    (directory / "report.json").write_text(json.dumps(summary, indent=1))
    (directory / "report.md").write_text(run_markdown(summary, figures, command))
    return directory


def _steady(s: dict[str, Any], name: str) -> Any:
    return (s.get("steady") or {}).get(name)


COMPARE_COLUMNS = (
    ("strategy", lambda s: s["run"].get("strategy") or "?"),
    ("namespace", lambda s: s["run"]["label"]),
    ("origin calls", lambda s: fmt(s["origin"]["calls"])),
    ("calls/key/TTL window", lambda s: fmt(s["origin"]["calls_per_key_window"], 3)),
    ("steady calls/key/window", lambda s: fmt(_steady(s, "calls_per_key_window"), 3)),
    ("calls / ideal", lambda s: fmt(_steady(s, "calls_per_ideal_refresh"), 3)),
    ("fresh", lambda s: pct(_steady(s, "fresh_share"))),
    ("hot fresh", lambda s: pct(_steady(s, "hot_fresh_share"))),
    ("age p99 s", lambda s: fmt(_steady(s, "served_age_p99_s"), 2)),
    ("req/s", lambda s: fmt(_steady(s, "throughput_rps") or s["generator"]["achieved_rate"])),
    ("p50 ms", lambda s: fmt(s["latency_ms"].get("p50"), 2)),
    ("p99 ms", lambda s: fmt(s["latency_ms"].get("p99"), 2)),
    ("p99 after warm-up", lambda s: fmt(s["latency_after_warmup_ms"].get("p99"), 2)),
    ("max ms", lambda s: fmt(s["latency_ms"].get("max"), 1)),
    ("errors", lambda s: str(s["errors"]["total"])),
    ("MISS after warm-up", lambda s: str(s["miss_after_warmup"])),
    ("MISS served key", lambda s: fmt(_steady(s, "miss_for_served_key"))),
    ("worker", worker_word),
    ("kept schedule", lambda s: "yes" if s["generator"]["kept_schedule"] else "NO"),
    ("marked", lambda s: ", ".join(flags(s)) or "-"),
)


def compare_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    return [[get(s) for _, get in COMPARE_COLUMNS] for s in summaries]


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    header = [name for name, _ in COMPARE_COLUMNS]
    rows = compare_rows(summaries)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def terminal_table(summaries: list[dict[str, Any]]) -> str:
    header = [name for name, _ in COMPARE_COLUMNS]
    rows = [header] + compare_rows(summaries)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_compare_report(summaries: list[dict[str, Any]], directory: Path, command: str | None = None) -> Path:
    command = command or command_line()
    per_run_figures = {}
    for s in summaries:
        per_run_figures[s["run"]["label"]] = run_figures(s, directory, stem=s["run"]["label"])
    compare_figure(summaries, directory / "compare.png")
    first = summaries[0]["run"]
    lines = [
        f"# herdless strategies compared — scenario `{first['scenario']}`",
        "",
        f"`{command}`",
        "",
        f"- Machine: {first['machine']}",
        f"- Stack `{first['url']}`, origin `{first['origin_url']}`; run one after another, each with fresh keys",
        f"- {first['arrivals']} arrivals at {first['rate']:g} req/s for {first['duration_s']:g}s"
        f" per strategy,"
        f" {first['keys']} keys, Zipf {first['zipf']:g}, TTL {first['ttl_s']:g}s"
        + (f", {first['clients']} clients" if first["scenario"] == "cold-herd" else ""),
        "",
        markdown_table(summaries),
        "",
        verdict_line(summaries),
        "",
        *[line + "\n" for line in problem_lines(summaries, first["rate"])],
        "*calls / ideal* is the origin calls after warm-up over an ideal cache's on the same trace (one"
        " refresh per key per TTL window in which it is read): 1.0 = the ideal, below 1 = values served"
        " staler than an ideal cache would; the plot's dashed line is that ideal. *marked*: the generator"
        " missed its schedule, or the refresh worker saturated; such a row measured the machine, and the"
        " verdict does not rank it."
        " The *calls/key/TTL window* figure is origin calls divided by the number of"
        " (key, TTL window) pairs requested (1.0 when every requested pair costs one call). The *steady* figure counts"
        " only after warm-up, with the origin count taken once the refresh queue and the origin were idle."
        " *fresh* is HIT + EARLY over all answers after warm-up (errors included); *hot fresh* the same on"
        " keys read at least 10 times a second; *age p99* the served `Age`; *MISS served key* a MISS for"
        " a key this run had already been served. *worker* says SATURATED when the queue was non-empty in"
        " more than 20% of samples or the refresh lag p99 exceeded the TTL. Latency is measured"
        " from the intended send time.",
        "",
        "![strategies side by side](compare.png)",
        "",
    ]
    notes = [f"{s['run']['label']}: {n}" for s in summaries for n in s["notes"]]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    for s in summaries:
        label = s["run"]["label"]
        figs = per_run_figures[label]
        lines += [f"## {label}", ""]
        lines += [f"![{label} {k}]({v})" for k, v in figs.items()]
        lines.append("")
    (directory / "report.md").write_text("\n".join(lines))
    (directory / "report.json").write_text(
        json.dumps({"command": command, "runs": summaries, "figures": per_run_figures}, indent=1)
    )
    return directory
