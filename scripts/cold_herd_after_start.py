"""Three cold herds of 1 000 clients, right after a stack start: the cold-herd figures of docs/numbers.md.

    .venv/bin/python scripts/cold_herd_after_start.py OUT_DIR

Starts the test harness's stack (tests/stack.py: a private redis-server, the demo origin with
its 100 ms latency, 2 gunicorn processes, the shipped gevent worker) on the shipped
namespaces.toml, runs `python -m loadtest run --scenario cold-herd --clients 1000` three times
on new keys (seeds 13, 14, 15), keeps each report.json as OUT_DIR/herd-N.json and prints p99,
p50, origin calls and errors of each. Run it from the checkout whose code you measure.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())

from tests.stack import Stack  # noqa: E402 - the checkout being measured


def main() -> None:
    outdir = Path(sys.argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    namespaces = (Path.cwd() / "namespaces.toml").read_text()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        namespaces_file = Path(tmp) / "namespaces.toml"
        namespaces_file.write_text(namespaces)
        env = {"WEB_CONCURRENCY": "2", "NAMESPACES_FILE": str(namespaces_file)}
        with Stack(Path(tmp) / "stack", env=env) as stack:
            for i in range(3):
                out = Path(tmp) / f"out{i}"
                command = [sys.executable, "-m", "loadtest", "run", "--scenario", "cold-herd", "--clients", "1000"]
                command += ["--namespace", "demo", "--url", stack.web_url, "--origin-url", stack.origin_url]
                command += ["--metrics-url", stack.worker_metrics_url, "--seed", str(13 + i)]
                command += ["--quiet", "--out", str(out)]
                subprocess.run(command, check=True, capture_output=True)
                report = glob.glob(f"{out}/**/report.json", recursive=True)[0]
                shutil.copy(report, outdir / f"herd-{i + 1}.json")
                data = json.loads(Path(report).read_text())
                latency, herd = data["latency_ms"], data["cold_herd"]
                results.append(
                    f"p99 {latency['p99']:.0f} ms p50 {latency['p50']:.0f} ms, "
                    f"{herd['origin_calls']} origin call(s), {herd['errors']} errors"
                )
    print(" | ".join(results))


if __name__ == "__main__":
    main()
