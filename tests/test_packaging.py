"""What the runtime needs is what `pip install .` installs; the load tester stays an extra."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.stack import ROOT

LOADTEST_ONLY = ("matplotlib", "numpy", "hdrh", "honcho", "psutil")


def test_the_runtime_dependencies_leave_out_the_load_tester() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for name in ("matplotlib", "numpy", "hdrhistogram", "honcho", "psutil"):
        assert name not in runtime, name
        assert any(name in dep.lower() for dep in project["optional-dependencies"]["loadtest"]), name


def test_every_process_of_the_image_imports_without_the_load_tester_packages() -> None:
    # Block the load tester's packages, then import what web, worker, origin and flower run.
    code = (
        "import sys\n"
        f"for name in {LOADTEST_ONLY!r}: sys.modules[name] = None\n"
        "import web.app, workers.tasks, workers.metrics_server, loadtest.origin, shared.engine\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
