"""hitbench: the rotation, the per-target figures and ratios, the metric reading, and one short run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest.hitbench import (
    TARGETS,
    Round,
    class_figures,
    counts_during,
    near_cache_counts,
    rotated_order,
    target_figures,
    throughput_ratio,
)
from tests.stack import ROOT


def test_each_target_leads_each_position_equally_often_over_a_full_rotation() -> None:
    orders = [rotated_order(TARGETS, i) for i in range(len(TARGETS))]
    assert orders[0] == list(TARGETS)
    assert orders[1] == ["near_cache_off", "baseline", "near_cache_on"]
    for position in range(len(TARGETS)):
        assert sorted(order[position] for order in orders) == sorted(TARGETS)
    assert rotated_order(TARGETS, 3) == orders[0]
    assert rotated_order([], 2) == []


def _round(target: str, ok: int, errors: int = 0, p50: float = 1.0, p99: float = 5.0) -> Round:
    return Round(target, 2.0, ok, errors, {"p50": p50, "p99": p99})


def test_target_figures_take_the_median_round_and_keep_every_round_in_run_order() -> None:
    rounds = [_round("baseline", 2000, p50=1.0), _round("baseline", 1000, 1, p50=3.0), _round("baseline", 3000, 2)]
    figures = target_figures(rounds)
    assert figures["rounds_req_per_s"] == [1000.0, 500.0, 1500.0]
    assert figures["median_req_per_s"] == 1000.0
    assert figures["p50_ms"] == 1.0 and figures["p99_ms"] == 5.0
    assert figures["errors"] == 3


def test_ratios_divide_each_herdless_median_by_the_baseline_median() -> None:
    rounds = [_round("near_cache_on", 2400), _round("near_cache_off", 1800), _round("baseline", 2000)]
    result = class_figures(rounds)
    assert result["ratios"] == {"near_cache_on_vs_baseline": 1.2, "near_cache_off_vs_baseline": 0.9}
    assert result["target_ratio_met"] is True
    assert class_figures([_round("near_cache_on", 2100), _round("baseline", 2000)])["target_ratio_met"] is False
    assert throughput_ratio(5.0, 0.0) is None


METRICS = """\
# HELP herdless_near_cache_total Near-cache lookups
# TYPE herdless_near_cache_total counter
herdless_near_cache_total{result="hit"} 90.0
herdless_near_cache_total{result="miss"} 2.0
# HELP herdless_requests_total Requests
# TYPE herdless_requests_total counter
herdless_requests_total{namespace="demo",outcome="hit"} 99.0
herdless_requests_total{namespace="demo",outcome="miss"} 1.0
herdless_requests_total{namespace="other",outcome="hit"} 7.0
"""


def test_near_cache_counts_read_hits_and_the_namespaces_requests_from_the_metrics_page() -> None:
    after = near_cache_counts(METRICS, "demo")
    assert after["near_cache_hits"] == 90 and after["requests"] == 100
    assert after["requests_by_outcome"] == {"hit": 99, "miss": 1}
    before = {"near_cache_hits": 10, "requests": 20}
    assert counts_during(before, after) == {"near_cache_hits": 80, "requests": 80, "near_cache_share": 1.0}


@pytest.mark.timeout(90)
def test_hitbench_starts_three_tiers_and_only_the_near_cache_tier_serves_from_memory(tmp_path: Path) -> None:
    start = time.monotonic()
    cmd = [sys.executable, "-m", "loadtest", "hitbench", "--classes", "gevent", "--rounds", "1"]
    cmd += ["--round-seconds", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert time.monotonic() - start < 60, "the smoke run should stay short"

    (report_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    report = json.loads((report_dir / "report.json").read_text())
    assert report["commit"] and report["run_id"] and "hitbench" in report["command"]
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["python"]
    (gevent,) = report["classes"]
    assert gevent["worker_class"] == "gevent" and gevent["web_concurrency"] == 2
    assert set(gevent["targets"]) == set(TARGETS)
    for figures in gevent["targets"].values():
        assert figures["median_req_per_s"] > 0
        assert figures["errors"] == 0
    assert all(isinstance(r, float) and r > 0 for r in gevent["ratios"].values())
    assert gevent["near_cache"]["near_cache_on"]["during_rounds"]["near_cache_hits"] > 0
    assert gevent["near_cache"]["near_cache_off"]["after_rounds"]["near_cache_hits"] == 0
    assert (report_dir / "report.md").read_text().count("| herdless, NEAR_CACHE=") == 2
    assert f"report: {report_dir / 'report.md'}" in proc.stdout
