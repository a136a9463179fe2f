"""What a comparison of strategies says on the terminal: which namespaces, what went wrong, a narrow table, a verdict.

report.md keeps every column (loadtest/report.py); the terminal gets what a reader acts on. A
run whose generator fell behind its schedule, or whose refresh worker saturated, measured the
machine rather than the strategy: it is marked, said in one line with what to do, and left
out of the verdict's ranking instead of being ranked.
"""

from __future__ import annotations

from typing import Any

from loadtest.summary import fmt

# The namespaces of the shipped namespaces.toml, one per strategy, in the order compared.
SHIPPED = ("demo-naive", "demo-lock", "demo-swr", "demo")
SCHEDULE = "schedule missed"
WORKER = "worker saturated"
ERRORS = "errors"
# More failed requests than this share (errors and timeouts), and a row measured an overloaded stack.
ERROR_SHARE = 0.01


def choose_namespaces(asked: list[str] | None, stack: dict[str, dict[str, Any]]) -> tuple[list[str], str]:
    """The namespaces to compare and a line saying which and why.

    `asked`: --namespaces as given (None: not given). `stack`: GET /v1/namespaces by name, empty
    when it could not be read. Not asked: the shipped four when the stack has them (or when its
    namespaces are unknown), else every namespace it has, one per strategy first."""
    if asked:
        missing = [n for n in asked if stack and n not in stack]
        if missing:
            raise SystemExit(
                f"loadtest: the stack has no namespace {', '.join(missing)}; it has {', '.join(sorted(stack))}."
                f" Compare those: LOADTEST_NAMESPACES={','.join(sorted(stack))} make loadtest"
                f" (python -m loadtest compare --namespaces ...)"
            )
        return asked, f"loadtest: comparing {', '.join(asked)} (as asked)"
    if not stack or all(n in stack for n in SHIPPED):
        why = "the shipped namespaces, one per strategy" if stack else "the shipped namespaces; the stack's are unknown"
        return list(SHIPPED), f"loadtest: comparing {', '.join(SHIPPED)} ({why})"
    # Another namespaces file: one namespace per strategy first (naive, lock, swr, xfetch), then the rest.
    order = {"naive": 0, "lock": 1, "swr": 2, "xfetch": 3}
    names = sorted(stack, key=lambda n: (order.get(str(stack[n].get("strategy")), 9), n))
    found = ", ".join(f"{n} ({stack[n].get('strategy', '?')})" for n in names)
    return names, f"loadtest: comparing what this stack's namespaces file has: {found}"


def flags(summary: dict[str, Any]) -> list[str]:
    out = []
    if not summary["generator"]["kept_schedule"] and summary["run"]["scenario"] != "cold-herd":
        out.append(SCHEDULE)
    if (summary.get("worker") or {}).get("saturated"):
        out.append(WORKER)
    if _error_share(summary) > ERROR_SHARE:
        out.append(ERRORS)
    return out


def _error_share(summary: dict[str, Any]) -> float:
    answered = summary.get("generator", {}).get("completed") or 0
    return summary["errors"]["total"] / answered if answered else 0.0


def _fewer(summaries: list[dict[str, Any]]) -> str:
    """A smaller comparison to suggest: the xfetch and naive namespaces when there are both."""
    by_strategy = {strategy_of(s): s["run"]["namespace"] for s in summaries}
    pair = [by_strategy[k] for k in ("xfetch", "naive") if k in by_strategy]
    if len(pair) < 2:
        pair = [s["run"]["namespace"] for s in summaries[:2]]
    return ",".join(pair)


def problem_lines(summaries: list[dict[str, Any]], rate: float) -> list[str]:
    """One line per kind of trouble, naming the runs and what to do about it."""
    lines = []
    late = [s for s in summaries if SCHEDULE in flags(s)]
    if late:
        worst = max(s["generator"]["send_lag_ms"]["max"] or 0 for s in late)
        lines.append(
            f"loadtest: SCHEDULE MISSED in {', '.join(s['run']['label'] for s in late)}: the generator could not send"
            f" {rate:g} req/s on time (sends up to {worst:.0f} ms late: the machine is busy). Lower LOADTEST_RATE"
            f" (now {rate:g}), compare fewer (LOADTEST_NAMESPACES={_fewer(summaries)}) or stop other load;"
            " those rows are marked, not ranked."
        )
    busy = [s for s in summaries if WORKER in flags(s)]
    if busy:
        named = ", ".join(f"{s['run']['label']} ({_worker_why(s)})" for s in busy)
        lines.append(
            f"loadtest: WORKER SATURATED in {named}:"
            f" refreshes queued too long. Lower LOADTEST_RATE (now {rate:g}), raise WORKER_CONCURRENCY or stop"
            " other load; those rows are marked, not ranked."
        )
    failing = [s for s in summaries if ERRORS in flags(s)]
    if failing:
        named = ", ".join(f"{s['run']['label']} ({100 * _error_share(s):.0f}%)" for s in failing)
        lines.append(
            f"loadtest: ERRORS in {named}: requests failed or timed out (report.md's notes say which kind)."
            f" Lower LOADTEST_RATE (now {rate:g}) or stop other load; those rows are marked, not ranked."
        )
    return lines


def _worker_why(summary: dict[str, Any]) -> str:
    worker = summary.get("worker") or {}
    why = []
    if worker.get("queue_busy_share") is not None:
        why.append(f"queue busy {100 * worker['queue_busy_share']:.0f}%")
    if worker.get("refresh_lag_p99_s") is not None:
        why.append(f"refresh lag p99 {worker['refresh_lag_p99_s']:g} s")
    return ", ".join(why) or "; ".join(worker.get("reasons") or [])


def strategy_of(summary: dict[str, Any]) -> str:
    return str(summary["run"].get("strategy") or "?")


def _calls_per_ideal(s: dict[str, Any]) -> float | None:
    value = (s.get("steady") or {}).get("calls_per_ideal_refresh")
    return None if value is None else float(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


SHORT_COLUMNS = (
    ("strategy", strategy_of),
    ("namespace", lambda s: s["run"]["namespace"]),
    ("calls/ideal", lambda s: fmt(_calls_per_ideal(s), 2)),
    ("fresh", lambda s: _pct((s.get("steady") or {}).get("fresh_share"))),
    ("hot fresh", lambda s: _pct((s.get("steady") or {}).get("hot_fresh_share"))),
    ("p99 ms", lambda s: fmt(s["latency_after_warmup_ms"].get("p99"), 1)),
    ("errors", lambda s: str(s["errors"]["total"])),
    ("marked", lambda s: ", ".join(flags(s)) or "-"),
)


def short_table(summaries: list[dict[str, Any]]) -> str:
    """At most 100 columns: what each strategy cost the origin against the ideal cache, and how fresh."""
    header = [name for name, _ in SHORT_COLUMNS]
    rows = [header] + [[get(s) for _, get in SHORT_COLUMNS] for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {2, 3, 4, 5, 6}
    lines = [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


TABLE_LEGEND = (
    "calls/ideal: origin calls after warm-up / an ideal cache's (1.00 = ideal; below 1 = served staler)\n"
    "fresh: HIT+EARLY share after warm-up; hot fresh: the same on keys read >= 10/s"
)


def verdict_line(summaries: list[dict[str, Any]]) -> str:
    """One line: each strategy's origin calls against the ideal and its fresh share, best first;
    marked runs last, unranked."""
    ranked = [s for s in summaries if not flags(s) and _calls_per_ideal(s) is not None]
    # Best first: fresh answers per origin call, against the ideal (which gets ~all fresh at 1.0).
    ranked.sort(key=lambda s: -((s.get("steady") or {}).get("fresh_share") or 0) / max(1.0, _calls_per_ideal(s) or 0))

    def figures(s: dict[str, Any]) -> str:
        ratio = _calls_per_ideal(s)
        if ratio is None:
            return f"{strategy_of(s)} ({s['run']['namespace']}): no steady figure"
        word = " (stampedes)" if ratio >= 1.5 else ""
        fresh = _pct((s.get("steady") or {}).get("fresh_share"))
        return (
            f"{strategy_of(s)} ({s['run']['namespace']}): {ratio:.2f}x the ideal's origin calls at {fresh} fresh{word}"
        )

    parts = [figures(s) for s in ranked]
    parts += [f"{figures(s)} [not ranked: {', '.join(flags(s)) or 'no figure'}]" for s in summaries if s not in ranked]
    return "verdict: " + "; ".join(parts)
