"""`make loadtest` tells the truth on any machine: a narrow table, marked rows, a verdict, any namespaces file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from loadtest.compare_plan import default_duration
from loadtest.verdict import choose_namespaces, problem_lines, short_table, verdict_line
from tests.stack import ROOT, stack_for


def summary(
    namespace: str, strategy: str, ideal: float, fresh: float, kept: bool = True, busy: bool = False, errors: int = 0
) -> Any:
    return {
        "run": {"namespace": namespace, "label": namespace, "strategy": strategy, "scenario": "steady"},
        "generator": {"kept_schedule": kept, "send_lag_ms": {"max": 12.0 if kept else 340.0}, "completed": 1000},
        "worker": {"saturated": busy, "reasons": ["queue depth above 0 in 80% of samples"] if busy else []},
        "steady": {"calls_per_ideal_refresh": ideal, "fresh_share": fresh, "hot_fresh_share": fresh},
        "latency_after_warmup_ms": {"p99": 4.2},
        "errors": {"total": errors},
    }


def test_the_verdict_ranks_fresh_answers_per_origin_call_and_says_naive_stampedes() -> None:
    line = verdict_line([summary("demo-naive", "naive", 9.8, 0.9), summary("demo", "xfetch", 1.03, 0.996)])
    assert line == (
        "verdict: xfetch (demo): 1.03x the ideal's origin calls at 99.6% fresh;"
        " naive (demo-naive): 9.80x the ideal's origin calls at 90.0% fresh (stampedes)"
    )


def test_a_missed_schedule_or_a_saturated_worker_is_one_line_with_what_to_do_and_the_row_is_not_ranked() -> None:
    runs = [
        summary("demo-naive", "naive", 1.0, 1.0, kept=False),
        summary("demo", "xfetch", 1.5, 0.82, busy=True),
        summary("demo-swr", "swr", 0.8, 0.85),
    ]
    schedule, worker = problem_lines(runs, rate=200)
    assert schedule.startswith("loadtest: SCHEDULE MISSED in demo-naive:") and "\n" not in schedule
    assert "Lower LOADTEST_RATE (now 200)" in schedule and "LOADTEST_NAMESPACES=demo,demo-naive" in schedule
    assert worker.startswith("loadtest: WORKER SATURATED in demo (") and "WORKER_CONCURRENCY" in worker
    assert "\n" not in worker
    verdict = verdict_line(runs)
    assert verdict.startswith("verdict: swr (demo-swr): 0.80x")
    assert "naive (demo-naive): 1.00x the ideal's origin calls at 100.0% fresh [not ranked: schedule missed]" in verdict
    assert verdict.endswith("xfetch (demo): 1.50x the ideal's origin calls at 82.0% fresh (stampedes)"
                            " [not ranked: worker saturated]")  # fmt: skip
    table = short_table(runs).splitlines()
    assert all(len(line) <= 100 for line in table), table
    assert table[0].split() == ["strategy", "namespace", "calls/ideal", "fresh", "hot", "fresh", "p99", "ms", "errors",
                                "marked"]  # fmt: skip
    assert table[2].split()[:2] == ["naive", "demo-naive"] and table[2].endswith("schedule missed")


def test_a_run_whose_requests_mostly_failed_is_marked_and_said_in_one_line() -> None:
    runs = [summary("demo-lock", "lock", 0.0, 0.0, errors=990), summary("demo", "xfetch", 1.02, 0.99, errors=5)]
    (line,) = problem_lines(runs, rate=200)
    assert line.startswith("loadtest: ERRORS in demo-lock (99%):") and "\n" not in line
    assert verdict_line(runs).startswith("verdict: xfetch (demo): 1.02x")
    assert "[not ranked: errors]" in verdict_line(runs)


def test_the_namespaces_compared_are_the_shipped_four_or_whatever_the_file_has() -> None:
    shipped = {n: {"strategy": s} for n, s in [("demo", "xfetch"), ("demo-swr", "swr"), ("demo-lock", "lock"),
                                                 ("demo-naive", "naive"), ("extra", "xfetch")]}  # fmt: skip
    assert choose_namespaces(None, shipped)[0] == ["demo-naive", "demo-lock", "demo-swr", "demo"]
    own = {"products": {"strategy": "xfetch"}, "plain": {"strategy": "naive"}}
    names, line = choose_namespaces(None, own)
    assert names == ["plain", "products"]
    assert line == "loadtest: comparing what this stack's namespaces file has: plain (naive), products (xfetch)"
    with pytest.raises(SystemExit, match="LOADTEST_NAMESPACES=plain,products make loadtest"):
        choose_namespaces(["demo"], own)


def test_the_default_run_holds_its_warm_up_and_six_ttls() -> None:
    assert default_duration(5) == 40 and default_duration(1) == 30 and default_duration(30) == 120


def test_make_loadtest_compares_what_another_namespaces_file_has_and_ends_with_the_verdict(tmp_path: Path) -> None:
    namespaces = (
        '[namespaces.products]\nstrategy = "xfetch"\norigin = "${ORIGIN_BASE_URL}/items/{key}"\n\n'
        '[namespaces.plain]\nstrategy = "naive"\norigin = "${ORIGIN_BASE_URL}/items/{key}"\n'
    )
    token = "make-loadtest-admin-token-0123456789abcdef"
    env = {"ADMIN_TOKEN": token, "CACHE_TTL_SECONDS": "1"}
    with stack_for(tmp_path / "stack", namespaces, env) as stack:
        run_env = {
            **os.environ,
            "ENV_FILE": str(tmp_path / "no.env"),
            "WEB_PORT": str(stack.web_port),
            "ORIGIN_PORT": str(stack.origin_port),
            "WORKER_METRICS_PORT": str(stack.worker_metrics_ports[stack.first_worker]),
            "ADMIN_TOKEN": token,
            "LOADTEST_RATE": "40",
            "LOADTEST_DURATION": "14",
            "LOADTEST_ARGS": f"--quiet --warmup 4 --out {tmp_path / 'out'}",
        }
        proc = subprocess.run(
            ["loadtest/make_loadtest.sh"], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=240
        )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "loadtest: comparing what this stack's namespaces file has: plain (naive), products (xfetch)" in out
    assert "loadtest: 2 namespaces x 14 s at 40 req/s" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("strategy  namespace"))
    table = lines[header : header + 4]
    assert all(len(line) <= 100 for line in table), table
    assert table[2].split()[:2] == ["naive", "plain"] and table[3].split()[:2] == ["xfetch", "products"]
    assert lines[-1].startswith("verdict: ") and "(products)" in lines[-1] and "(plain)" in lines[-1]
