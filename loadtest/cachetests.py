"""`python -m loadtest cachetests`: the HTTP cache test suite (cache-tests.fyi) through a proxy namespace.

The suite is the npm package http-cache-tests (Mark Nottingham's, BSD-3), pinned by
tests/httpcache_suite/package-lock.json and installed there by `npm ci` (``ensure_installed``).
Its server (server/server.mjs) is the origin; a private herdless stack (redis-server, one
Celery worker, one gunicorn web tier) serves it through one proxy namespace at its defaults,
mounted at ``/suite``; the suite's command-line client (cli.mjs) runs every test through it and
prints JSON results. They are graded as the suite's own pages grade them
(lib/display.mjs ``determineTestResult``: a test whose dependency did not pass does not pass),
over the tests the command-line client runs (browser-only tests are not), and set beside the
published results of the reverse proxies and CDNs the package carries (results/*.json).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.processes import ROOT, Process, free_port, port_open, wait_until
from launcher.stack import PrivateStack

SUITE_DIR = ROOT / "tests" / "httpcache_suite"
PACKAGE_DIR = SUITE_DIR / "node_modules" / "http-cache-tests"
MOUNT = "/suite"
NAMESPACE = "suite"
# The client runs 100 tests at once, each with pauses of 3 s: the whole suite takes about a minute.
SUITE_TIMEOUT_SECONDS = 600.0
PASSING = ("pass", "yes")


class SuiteUnavailable(RuntimeError):
    """node/npm missing, or the suite could not be installed."""


def ensure_installed() -> Path:
    """The installed package's directory, after `npm ci` when the install is missing or older than
    the lock file (the lock pins the suite and its dependencies, integrity hashes included)."""
    stamp = SUITE_DIR / "node_modules" / ".package-lock.json"
    lock = SUITE_DIR / "package-lock.json"
    if PACKAGE_DIR.is_dir() and stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return PACKAGE_DIR
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise SuiteUnavailable("node and npm are needed to run the HTTP cache test suite")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=SUITE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0 or not PACKAGE_DIR.is_dir():
        raise SuiteUnavailable(f"npm ci in {SUITE_DIR} failed: {done.stderr.strip()[-2000:]}")
    return PACKAGE_DIR


# -- grading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestInfo:
    id: str
    suite: str
    name: str
    kind: str  # required | optimal | check
    depends_on: tuple[str, ...]
    browser_only: bool


@dataclass
class Grade:
    """Required and optimal tests passed out of those run, and what did not pass with why."""

    required: int = 0
    required_total: int = 0
    optimal: int = 0
    optimal_total: int = 0
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)  # (kind, id, outcome, message)


def load_metadata() -> tuple[dict[str, TestInfo], list[dict[str, Any]]]:
    """The suite's tests by id and the published peers (name, type, version, results)."""
    ensure_installed()
    done = subprocess.run(["node", "meta.mjs"], cwd=SUITE_DIR, capture_output=True, text=True, timeout=60, check=True)
    raw = json.loads(done.stdout)
    tests = {
        t["id"]: TestInfo(t["id"], t["suite"], t["name"], t["kind"], tuple(t["depends_on"]), t["browser_only"])
        for t in raw["tests"]
    }
    return tests, raw["peers"]


def outcome(tests: dict[str, TestInfo], results: dict[str, Any], test_id: str) -> str:
    """lib/display.mjs's determineTestResult, dependencies honoured: pass, fail, optional_fail,
    yes, no, untested, dependency_fail, setup_fail or retry."""
    result = results.get(test_id)
    if result is None:
        return "untested"
    test = tests[test_id]
    for dependency in test.depends_on:
        if dependency in tests and outcome(tests, results, dependency) not in PASSING:
            return "dependency_fail"
    if isinstance(result, list) and result and result[0] == "Setup":
        return "retry" if len(result) > 1 and result[1] == "retry" else "setup_fail"
    if test.kind == "check":
        return "yes" if result is True else "no"
    if result is True:
        return "pass"
    return "fail" if test.kind == "required" else "optional_fail"


def grade(tests: dict[str, TestInfo], results: dict[str, Any]) -> Grade:
    """Grade one implementation's results over the tests the command-line client runs."""
    g = Grade()
    for test in tests.values():
        if test.browser_only or test.kind == "check":
            continue
        verdict = outcome(tests, results, test.id)
        passed = verdict == "pass"
        if test.kind == "required":
            g.required_total += 1
            g.required += passed
        else:
            g.optimal_total += 1
            g.optimal += passed
        if not passed:
            result = results.get(test.id)
            message = result[1] if isinstance(result, list) and len(result) > 1 else ""
            g.failures.append((test.kind, test.id, verdict, str(message)))
    return g


def peer_grades(tests: dict[str, TestInfo], peers: list[dict[str, Any]]) -> list[tuple[str, Grade]]:
    """The published reverse proxies' and CDNs' grades on the same tests, best required first."""
    graded = [
        (f"{p['name']} {p.get('version', '')}".strip(), grade(tests, p["results"]))
        for p in peers
        if p.get("type") in ("rev-proxy", "cdn")
    ]
    return sorted(graded, key=lambda item: (-item[1].required, -item[1].optimal))


# -- running --------------------------------------------------------------------------------


def _node_env(**config: str) -> dict[str, str]:
    """The environment `npm run` would give the package's scripts: its config as npm_config_* and
    npm_package_config_* (cli.mjs falls back on the second when the first is empty)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("npm_")}
    env.update({f"npm_config_{k}": v for k, v in config.items()})
    env.update({f"npm_package_config_{k}": v for k, v in config.items()})
    return env


@contextmanager
def suite_origin(directory: Path) -> Iterator[int]:
    """The suite's origin server (server/server.mjs) on a free loopback port; yields the port."""
    ensure_installed()
    port = free_port()
    env = _node_env(protocol="http", port=str(port), pidfile=str(directory / "suite-origin.pid"))
    proc = Process("suite-origin", ["node", str(PACKAGE_DIR / "server" / "server.mjs")], env, directory)
    try:
        wait_until(lambda: port_open(port), 20, "the suite's origin server", process=proc)
        yield port
    finally:
        proc.stop()


def namespaces_toml(origin_port: int) -> str:
    """A proxy namespace at its defaults in front of the suite's origin."""
    return f'[namespaces.{NAMESPACE}]\nproxy = "http://127.0.0.1:{origin_port}"\nmount = "{MOUNT}"\n'


@contextmanager
def proxy_stack(directory: Path, origin_port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """redis-server + one worker + one web tier serving the proxy namespace; yields its base URL."""
    path = directory / "namespaces.toml"
    path.write_text(namespaces_toml(origin_port))
    stack = PrivateStack(directory, {"NAMESPACES_FILE": str(path), **(env or {})})
    try:
        stack.start_redis()
        stack.start_worker("w1")
        stack.start_web("web")
        stack.wait_worker_ready("w1")
        yield f"http://127.0.0.1:{stack.web_ports['web']}{MOUNT}"
    except BaseException:
        for proc in stack.procs.values():
            print(f"----- {proc.name} log (tail) -----\n{proc.tail(3000)}")
        raise
    finally:
        stack.stop(kill_workers=True)


def run_client(base_url: str, test_id: str = "", timeout: float = SUITE_TIMEOUT_SECONDS) -> str:
    """cli.mjs through ``base_url``: the JSON results of every test, or with ``test_id`` the
    request/response dump and result of that one test (as text)."""
    done = subprocess.run(
        ["node", "--no-warnings", "cli.mjs"],
        cwd=PACKAGE_DIR,
        env=_node_env(base=base_url, id=test_id),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cli.mjs exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def run_suite(test_id: str = "", env: dict[str, str] | None = None, workdir: Path | None = None) -> str:
    """Start the suite's origin and a private herdless stack before it, run the client, stop all."""
    directory = Path(workdir or tempfile.mkdtemp(prefix="herdless-cachetests-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with suite_origin(directory) as origin_port, proxy_stack(directory, origin_port, env) as base_url:
            return run_client(base_url, test_id)
    finally:
        if workdir is None:
            shutil.rmtree(directory, ignore_errors=True)


def report(ours: Grade, peers: list[tuple[str, Grade]]) -> str:
    """The table: herdless beside the peers, then the tests herdless did not pass."""
    lines = [f"{'implementation':<36} {'required':>9} {'optimal':>10}"]
    rows = [("herdless (proxy namespace, defaults)", ours), *peers]
    for name, g in rows:
        lines.append(f"{name[:36]:<36} {g.required:>4}/{g.required_total:<4} {g.optimal:>5}/{g.optimal_total:<4}")
    if ours.failures:
        lines.append("")
        lines.append("not passed by herdless:")
        for kind, test_id, verdict, message in sorted(ours.failures):
            lines.append(f"  {kind:<8} {test_id:<52} {verdict:<15} {message[:110]}")
    return "\n".join(lines)


def main(test_id: str = "", out: Path | None = None, results_file: Path | None = None) -> int:
    """Run (or, with ``results_file``, only grade) the suite and print the table."""
    tests, peers = load_metadata()
    if test_id:
        print(run_suite(test_id))
        return 0
    started = time.monotonic()
    raw = results_file.read_text() if results_file else run_suite()
    results = json.loads(raw)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    ours = grade(tests, results)
    print(report(ours, peer_grades(tests, peers)))
    if not results_file:
        print(f"\n(suite run in {time.monotonic() - started:.0f} s; results: {out})")
    return 0
