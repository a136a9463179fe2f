"""loadtest/batchbench.py runs end to end on a small scale and prints both of its comparisons."""

from __future__ import annotations

import re
import subprocess

from tests.stack import PYTHON, ROOT


def test_batchbench_runs_and_prints_both_comparisons() -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "loadtest.batchbench", "--rounds", "1", "--keys", "200", "--round-seconds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"batch read : [\d,]+ keys/s", out) and re.search(r"100 GETs   : [\d,]+ keys/s", out), out
    assert "Redis commands naming the keys during the batch reads: 0" in out, out
    calls = {ns: int(n) for ns, n in re.findall(r"(fill100|fill1)\s*:\s+(\d+) origin calls", out)}
    assert calls["fill1"] == 200, out  # one call per key
    assert calls["fill100"] <= 4, out  # 200 keys: 2 calls when both batches are full
