"""`python -m loadtest refreshbench` end to end: it starts a private stack per pool, bursts cold keys, reports."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stack import ROOT


@pytest.mark.timeout(90)
def test_refreshbench_serves_every_cold_key_for_both_pools_and_reports_the_limit(tmp_path: Path) -> None:
    start = time.monotonic()
    cmd = [sys.executable, "-m", "loadtest", "refreshbench", "-n", "50", "--pools", "prefork,gevent", "--seed", "7"]
    cmd += ["--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert time.monotonic() - start < 40, "the smoke run should stay short"

    (report_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    report = json.loads((report_dir / "report.json").read_text())
    assert report["seed"] == 7 and report["commit"]
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["python"]
    by_pool = {r["pool"]: r for r in report["results"]}
    assert set(by_pool) == {"prefork", "gevent"}
    assert by_pool["prefork"]["settings"]["worker_concurrency"] == 2
    assert by_pool["prefork"]["limit_per_s"] == 20.0  # min(2, 50) / 100 ms
    for result in by_pool.values():
        assert result["keys"] == 50
        assert result["served"] + result["errors"] == 50
        assert result["served"] > 0 and result["served_per_s"] > 0
        assert result["ratio_to_limit"] == pytest.approx(result["served_per_s"] / result["limit_per_s"], abs=0.01)
        assert result["origin_max_in_flight"] >= 1
        # One refresh per cold key, plus the retry of an origin call that failed under the burst
        # (the demo origin refuses the odd connection when 50 refreshes start at once; a failed
        # key is retried after its 1 s cooldown). Never one per waiting request.
        assert 1 <= result["origin_calls"] <= 50 + 5
        # The cost beside the rate: each role of the stack the bench started spent some CPU on
        # the burst, reported per key served.
        cpu = result["cpu_ms_per_key"]
        assert set(cpu) == {"redis", "origin", "worker", "web"}, cpu
        assert cpu["web"] > 0 and cpu["worker"] > 0, cpu
    assert "CPU ms/key" in proc.stdout
    assert "refreshes/s" in proc.stdout and f"report: {report_dir / 'report.json'}" in proc.stdout
