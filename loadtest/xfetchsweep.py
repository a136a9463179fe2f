"""The early-refresh sweep: issue 18's three workloads, each against a fresh private stack per rule.

A *rule* is an XFETCH_BETA for this checkout (`2`) or for a baseline checkout (`prev:4`, the
previous release unpacked in `--baseline DIR`, e.g. `git archive <commit> | tar -x -C DIR`):
the generator, the figures and the machine are the same, only the stack's code differs. Rules
alternate within each round (their order rotates round by round), so a noisy machine does not
favour one of them. The figures each acceptance row asks for are printed side by side:

- one-key: origin calls per TTL window over the whole run (first fill included) and the share
  of answers that were not STALE;
- zipf-1.1, zipf-0.8: origin calls against an ideal refresh-on-expiry cache on the same trace,
  the hot keys' fresh share (read at least `hot_rps` times a second) and p99, after warm-up;
- loaded-2s: ten hot keys, TTL 2 s, a 20 ms origin: calls per key per window when the measured
  refresh duration is mostly a loaded machine's queue and CPU wait.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import launcher.processes
from loadtest.openloop import X_CACHE_CODES, RunConfig, run_blocking
from loadtest.steady import FRESH, fresh_share, hot_keys
from loadtest.summary import summarize


@dataclass(frozen=True)
class Workload:
    name: str
    rate: float
    keys: int
    zipf: float
    ttl: float
    origin_ms: int
    duration: float
    warmup: float
    hot_rps: float


WORKLOADS = {
    w.name: w
    for w in (
        Workload("one-key", 500, 1, 1.1, 2, 300, 12, 0, 10),
        Workload("zipf-1.1", 1000, 1000, 1.1, 5, 100, 40, 10, 10),
        Workload("zipf-0.8", 100, 500, 0.8, 30, 1000, 120, 30, 1),
        # Not an acceptance row: hot keys on a short TTL with a fast origin, for a loaded
        # machine (run it beside a CPU hog), where the measured refresh duration is mostly queue
        # and CPU wait and the head start's bound is what keeps a key near one call per TTL.
        Workload("loaded-2s", 300, 10, 1.1, 2, 20, 12, 0, 10),
    )
}


@dataclass(frozen=True)
class Rule:
    label: str
    beta: float
    checkout: Path | None  # None: this checkout


def parse_rules(text: str, baseline: Path | None) -> list[Rule]:
    rules = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        prev = word.startswith("prev:")
        beta = float(word.removeprefix("prev:"))
        if beta < 0:
            raise SystemExit(f"loadtest: refused: rule {word}: beta must be >= 0")
        if prev and baseline is None:
            raise SystemExit(
                f"loadtest: refused: rule {word} needs --baseline DIR (a checkout of the previous release)"
            )
        rules.append(Rule(word, beta, baseline if prev else None))
    return rules


@contextlib.contextmanager
def stacks_from(checkout: Path | None) -> Iterator[None]:
    """Start the stack's processes in `checkout` (their working directory, first on their
    sys.path, so its packages are the ones imported) instead of this one."""
    if checkout is None:
        yield
        return
    saved = launcher.processes.ROOT
    launcher.processes.ROOT = checkout.resolve()
    try:
        yield
    finally:
        launcher.processes.ROOT = saved


def figures(summary: dict[str, Any], result: Any, workload: Workload) -> dict[str, Any]:
    """The acceptance row's figures of one run."""
    rec = result.records
    offset = np.frombuffer(rec.offset, dtype=np.float64)
    keys = np.frombuffer(rec.key, dtype=np.int32)
    xcache = np.frombuffer(rec.x_cache, dtype=np.int8)
    st = summary.get("steady") or {}
    counted = offset >= st.get("from_s", workload.warmup)
    seconds = max(0.0, workload.duration - st.get("from_s", workload.warmup))
    hot = hot_keys(keys, counted, seconds, workload.hot_rps)
    fresh_codes = [X_CACHE_CODES.index(name) for name in FRESH]
    hot_fresh = fresh_share(xcache, fresh_codes, counted & np.isin(keys, hot))
    stale = int(np.count_nonzero(xcache == X_CACHE_CODES.index("STALE")))
    return {
        "calls_per_window": summary["origin"]["calls_per_key_window"],
        "origin_calls": summary["origin"]["calls"],
        "calls_per_ideal": st.get("calls_per_ideal_refresh"),
        "not_stale": 1 - stale / len(xcache) if len(xcache) else None,
        "early_share": int(np.count_nonzero(xcache == X_CACHE_CODES.index("EARLY"))) / len(xcache)
        if len(xcache)
        else None,
        "fresh": st.get("fresh_share"),
        "hot_keys": int(len(hot)),
        "hot_fresh": None if hot_fresh is None else round(hot_fresh, 4),
        "p99_ms": st.get("latency_p99_ms"),
        "errors": summary["errors"]["total"],
        "error_kinds": summary["errors"]["by_kind"],
        "status": summary["status"],
        "kept_schedule": summary["generator"]["kept_schedule"],
        "worker_saturated": (summary.get("worker") or {}).get("saturated"),
    }


def run_one(workload: Workload, rule: Rule, seed: int, stack_env: dict[str, str], quiet: bool) -> dict[str, Any]:
    from loadtest.launcher import LocalStack

    env = {
        **stack_env,
        "CACHE_TTL_SECONDS": f"{workload.ttl:g}",
        "XFETCH_BETA": f"{rule.beta:g}",
        "ORIGIN_LATENCY_MS": str(workload.origin_ms),
    }
    with stacks_from(rule.checkout), LocalStack(env=env) as stack:
        cfg = RunConfig(
            url=stack.web_urls[0],
            origin_url=stack.origin_url,
            metrics_urls=stack.metrics_urls,
            namespace="demo",
            rate=workload.rate,
            duration=workload.duration,
            keys=workload.keys,
            zipf=workload.zipf,
            ttl=workload.ttl,
            seed=seed,
            warmup=workload.warmup,
            progress=not quiet,
            label=f"{workload.name}/{rule.label}",
        )
        result = run_blocking(cfg)
    summary = summarize(result)
    return {"workload": workload.name, "rule": rule.label, "seed": seed, **figures(summary, result, workload)}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


COLUMNS = (
    ("workload", lambda r: r["workload"]),
    ("rule", lambda r: r["rule"]),
    ("round", lambda r: str(r["round"])),
    ("calls/window", lambda r: _num(r["calls_per_window"])),
    ("calls/ideal", lambda r: _num(r["calls_per_ideal"])),
    ("not STALE", lambda r: _pct(r["not_stale"])),
    ("EARLY", lambda r: _pct(r["early_share"])),
    ("hot fresh", lambda r: _pct(r["hot_fresh"])),
    ("hot keys", lambda r: str(r["hot_keys"])),
    ("p99 ms", lambda r: _num(r["p99_ms"], 1)),
    ("errors", lambda r: str(r["errors"])),
    ("worker", lambda r: "n/a" if r["worker_saturated"] is None else "SATURATED" if r["worker_saturated"] else "ok"),
)


def table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    cells = [[name for name, _ in COLUMNS]] + [[get(r) for _, get in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        lines.insert(1, "|" + "---|" * len(COLUMNS))
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_xfetchsweep(args: argparse.Namespace) -> int:
    from loadtest.__main__ import _raise_fd_limit, git_commit, machine_facts, parse_stack_env
    from loadtest.report import command_line, new_results_dir

    _raise_fd_limit(4096)
    rules = parse_rules(args.rules, args.baseline)
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"loadtest: refused: unknown workload {unknown[0]} (known: {', '.join(WORKLOADS)})")
    stack_env = parse_stack_env(args.stack_env)
    workloads = dict(WORKLOADS)
    for pair in args.rate_of:
        name, _, rate = pair.partition("=")
        if name not in workloads or not rate:
            raise SystemExit(f"loadtest: refused: --rate-of {pair}: expected WORKLOAD=REQ_PER_S")
        workloads[name] = dataclasses.replace(workloads[name], rate=float(rate))
    rows: list[dict[str, Any]] = []
    started = time.time()
    for round_no in range(args.rounds):
        for name in names:
            shift = round_no % len(rules)
            for rule in rules[shift:] + rules[:shift]:
                row = {
                    "round": round_no + 1,
                    **run_one(workloads[name], rule, args.seed + round_no, stack_env, args.quiet),
                }
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    order = {name: i for i, name in enumerate(names)}
    rows.sort(key=lambda r: (order[r["workload"]], r["rule"], r["round"]))
    directory = new_results_dir(args.out, "xfetchsweep")
    report = {
        "command": command_line(),
        "commit": git_commit(),
        "baseline": None if args.baseline is None else str(args.baseline),
        "machine": machine_facts(),
        "minutes": round((time.time() - started) / 60, 1),
        "workloads": {n: dataclasses.asdict(workloads[n]) for n in names},
        "rows": rows,
    }
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    (directory / "report.md").write_text(
        f"# herdless early-refresh sweep\n\n`{report['command']}`\n\n- Machine: {report['machine']['description']}\n"
        f"- Workloads: {json.dumps(report['workloads'])}\n\n{table(rows, markdown=True)}\n"
    )
    print()
    print(table(rows))
    print(f"\nreport: {directory / 'report.md'}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "xfetchsweep",
        help="issue 18's three workloads on a fresh private stack per rule (XFETCH_BETA, here or in a baseline"
        " checkout): origin calls against the ideal, freshness, p99",
    )
    p.add_argument(
        "--rules", default="1,2,3", help="comma-separated betas; prev:B runs --baseline (default %(default)s)"
    )
    p.add_argument("--baseline", type=Path, default=None, help="a checkout of the previous release, for prev: rules")
    p.add_argument(
        "--workloads",
        default="one-key,zipf-1.1",
        help=f"comma-separated, of {', '.join(WORKLOADS)} (default %(default)s)",
    )
    p.add_argument("--rounds", type=int, default=1, help="repeat, rotating the rules' order (default %(default)s)")
    p.add_argument(
        "--rate-of",
        action="append",
        default=[],
        metavar="WORKLOAD=REQ_PER_S",
        help="another rate for one workload (repeatable), e.g. when the machine cannot carry it",
    )
    p.add_argument("--seed", type=int, default=18, help="the first round's seed; round n uses seed + n - 1")
    p.add_argument(
        "--stack-env", action="append", default=[], metavar="NAME=VALUE", help="more stack environment (repeatable)"
    )
    p.add_argument("--out", type=Path, default=None, help="results directory base (default loadtest/results)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument("--no-renice", action="store_true")
    p.set_defaults(func=cmd_xfetchsweep)
