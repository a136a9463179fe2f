"""What the runtime needs is what `pip install .` installs; the load tester stays an extra."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.stack import ROOT

LOADTEST_ONLY = ("matplotlib", "numpy", "hdrh", "psutil")


def test_the_runtime_dependencies_leave_out_the_load_tester() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for name in ("matplotlib", "numpy", "hdrhistogram", "psutil"):
        assert name not in runtime, name
        assert any(name in dep.lower() for dep in project["optional-dependencies"]["loadtest"]), name


def test_every_process_of_the_image_imports_without_the_load_tester_packages() -> None:
    # Block the load tester's packages, then import what web, worker, origin and flower run.
    code = (
        "import sys\n"
        f"for name in {LOADTEST_ONLY!r}: sys.modules[name] = None\n"
        "import web.app, workers.tasks, workers.metrics_server, demo_origin, shared.readpath, shared.refresher\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_launcher_and_the_demo_origin_import_without_the_load_tester_packages() -> None:
    # `make run` has the loadtest extra, but the tests' stacks and the image must not need it.
    code = (
        "import sys\n"
        f"for name in {(*LOADTEST_ONLY, 'dotenv')!r}: sys.modules[name] = None\n"
        "import launcher.processes, launcher.redis_server, launcher.roles, launcher.stack, demo_origin\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def _requirement_closure(requirements: list[str]) -> dict[str, str]:
    """Every distribution these requirements install, transitively, read from the installed
    distributions' metadata: {canonical name: installed version}. Extras are followed."""
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        for extra in req.extras or {""}:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            dist = importlib.metadata.distribution(name)
            found[name] = dist.version
            for text in dist.requires or []:
                sub = Requirement(text)
                # A requirement of this distribution's own extra `extra`, or an unconditional one.
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(sub)
    return found


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt pins exact versions only: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_pip_install_without_extras_pulls_no_load_tester_package_even_indirectly() -> None:
    runtime = _requirement_closure(_project()["dependencies"])
    assert {"celery", "redis", "flask", "gunicorn", "kombu"} <= runtime.keys()  # the walk does follow
    pulled = sorted({"matplotlib", "numpy", "hdrhistogram", "psutil"} & runtime.keys())
    assert not pulled, f"`pip install .` would install {pulled}"


def test_constraints_pin_every_package_that_make_installs_within_pyproject_bounds() -> None:
    project = _project()
    extras = project["optional-dependencies"]
    direct = project["dependencies"] + extras["dev"] + extras["loadtest"]
    pins = _constraints()
    closure = _requirement_closure(direct)
    unpinned = sorted(closure.keys() - pins.keys())
    assert not unpinned, f"constraints.txt lacks {unpinned}: run `make lock`"
    for text in direct:
        req = Requirement(text)
        pinned = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(pinned, prereleases=True), (
            f"{req} but constraints.txt pins {pinned}: run `make lock`"
        )


def _installs(target: str) -> list[str]:
    """The constrained pip installs `make <target>` runs when pyproject.toml changed (`-n`: none run)."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-W", "pyproject.toml", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return [
        line.split("-e ", 1)[1] for line in out.splitlines() if "pip install" in line and "-c constraints.txt" in line
    ]


def test_make_run_installs_the_service_and_load_tester_but_not_the_test_and_lint_tools() -> None:
    assert _installs("run") == ["'.[loadtest]'"]
    assert _installs("loadtest") == ["'.[loadtest]'"]
    assert _installs("test")[-1] == "'.[dev,loadtest]'"


def test_every_package_the_load_tester_imports_is_installed_by_make_run() -> None:
    # `make run` and `make loadtest` install the runtime and the loadtest extra, not the dev tools:
    # a module of loadtest/ importing what only the test tools pulled in failed on a fresh
    # machine (`steady --proxy`: "No module named 'requests'").
    import ast

    project = _project()
    installed = _requirement_closure([*project["dependencies"], *project["optional-dependencies"]["loadtest"]])
    providers = importlib.metadata.packages_distributions()
    missing: set[str] = set()
    # locustfile.py is for Locust's own runner, which its users install (`pip install locust`).
    for path in sorted(p for p in (ROOT / "loadtest").glob("*.py") if p.name != "locustfile.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top in sys.stdlib_module_names or top in ("loadtest", "shared", "web", "workers", "launcher"):
                    continue
                if top in ("demo_origin", "tests"):
                    continue
                dists = {canonicalize_name(d) for d in providers.get(top, [])}
                if not dists & installed.keys():
                    missing.add(f"{path.name}: {top}")
    assert not missing, f"imported by the load tester, not installed by make run: {sorted(missing)}"
