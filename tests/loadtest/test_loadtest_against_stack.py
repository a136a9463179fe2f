"""`python -m loadtest run` and `compare` against a real stack (origin, gunicorn web, Celery worker, Redis)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib import image

from tests.e2e.conftest import SHIPPED_AND_LONG_HERD_NAMESPACES
from tests.stack import ROOT, Stack

STACK_NAMESPACES = SHIPPED_AND_LONG_HERD_NAMESPACES
STACK_ENV = {"CACHE_TTL_SECONDS": "1"}  # keys expire several times in a few seconds of load


def loadtest(stack: Stack, out: Path, *args: str) -> str:
    cmd = [
        sys.executable, "-m", "loadtest", *args,
        "--url", stack.web_url,
        "--origin-url", stack.origin_url,
        "--metrics-url", stack.worker_metrics_url,
        "--ttl", "1",
        "--seed", "1",
        "--quiet",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def only_report_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def assert_is_figure(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    height, width = image.imread(path).shape[:2]
    assert width >= 600 and height >= 300, (path, width, height)


def test_run_reports_latency_cache_mix_and_origin_calls_per_key_window(stack: Stack, tmp_path: Path) -> None:
    stdout = loadtest(stack, tmp_path, "run", "--namespace", "demo", "--rate", "50", "--duration", "4", "--keys", "10")
    report = only_report_dir(tmp_path)
    assert f"report: {report / 'report.md'}" in stdout

    data = json.loads((report / "report.json").read_text())
    gen = data["generator"]
    assert gen["completed"] == gen["scheduled"] > 120
    # Whether the generator kept its schedule depends on the machine (three test files run at
    # once): the report must say so by its own rule, late sends at most 1 % of the requests.
    assert gen["kept_schedule"] is (gen["late_sends"] <= 0.01 * gen["completed"])
    assert data["errors"]["total"] == 0
    assert set(data["x_cache"]) <= {"HIT", "EARLY", "STALE", "MISS"}
    assert data["x_cache"].get("HIT", 0) + data["x_cache"].get("EARLY", 0) + data["x_cache"].get("STALE", 0) > 0
    for name in ("p50", "p90", "p99", "p99.9", "max"):
        assert data["latency_ms"][name] > 0
    # every run has its own keys, so its first request per key reached the origin
    assert data["run"]["key_prefix"].startswith("run-")
    origin = data["origin"]
    assert 10 <= origin["calls"] <= origin["calls_all_keys"]
    assert origin["key_windows"] >= 10
    assert origin["calls_per_key_window"] == pytest.approx(origin["calls"] / origin["key_windows"], abs=1e-3)
    ps = data["per_second"]
    assert len(ps["requests"]) == 4 and sum(ps["requests"]) == gen["completed"]
    assert len(ps["latency_ms"]["p99"]) == 4
    assert sum(v or 0 for v in ps["origin_calls"]) > 0
    assert all(q is not None for q in ps["queue_depth"])

    md = (report / "report.md").read_text()
    assert "Origin calls per key per TTL window" in md
    for figure in ("latency.png", "xcache.png", "origin.png"):
        assert f"]({figure})" in md
        assert_is_figure(report / figure)


def test_compare_shows_naive_costing_the_origin_more_than_demo(stack: Stack, tmp_path: Path) -> None:
    # few hot keys: every expiry of a naive key is a small stampede
    stdout = loadtest(
        stack, tmp_path, "compare", "--namespaces", "demo-naive,demo", "--rate", "80", "--duration", "3", "--keys", "3"
    )
    report = only_report_dir(tmp_path)
    data = json.loads((report / "report.json").read_text())
    runs = {run["run"]["label"]: run for run in data["runs"]}
    assert set(runs) == {"demo-naive", "demo"}
    assert runs["demo-naive"]["run"]["key_prefix"] != runs["demo"]["run"]["key_prefix"]
    naive, demo = runs["demo-naive"]["origin"], runs["demo"]["origin"]
    assert naive["calls"] > demo["calls"], (naive, demo)
    assert naive["calls_per_key_window"] > demo["calls_per_key_window"]
    assert runs["demo"]["errors"]["total"] == 0

    md = (report / "report.md").read_text()
    assert "| demo-naive |" in md and "| demo |" in md
    assert "calls/ideal" in stdout and stdout.rstrip().splitlines()[-1].startswith("verdict: ")  # terminal table
    assert_is_figure(report / "compare.png")
    for label in runs:
        assert_is_figure(report / f"{label}-origin.png")


def test_cold_herd_reports_one_origin_call_for_many_simultaneous_clients(stack: Stack, tmp_path: Path) -> None:
    stdout = loadtest(stack, tmp_path, "run", "--scenario", "cold-herd", "--clients", "100", "--namespace", "herd")
    data = json.loads((only_report_dir(tmp_path) / "report.json").read_text())
    herd = data["cold_herd"]
    assert herd["clients"] == 100 and herd["ok"] == 100 and herd["errors"] == 0
    assert herd["key"].startswith(data["run"]["key_prefix"])
    assert herd["origin_calls"] == 1
    assert "100 clients -> 1 origin call(s), 0 errors" in stdout
