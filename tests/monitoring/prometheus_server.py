"""A real Prometheus (Debian's `prometheus` binary) on a free port, scraping targets a test names, and its API."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
import yaml

from tests.stack import free_port


def required_tool(name: str, package: str) -> str:
    """Path of a tool `make test` installs; its absence is a broken setup, not a reason to skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH: install Debian's `{package}` package (make test does)")
    return path


def _scrape_config(job: str, url: str, workdir: Path) -> dict[str, Any]:
    """A scrape job for `url`; credentials in the URL become basic auth with a password_file,
    the way monitoring/prometheus.yml scrapes Flower."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    config: dict[str, Any] = {
        "job_name": job,
        "scheme": parts.scheme or "http",
        "metrics_path": parts.path if parts.path not in ("", "/") else "/metrics",
        "static_configs": [{"targets": [f"{host}:{parts.port}" if parts.port else host]}],
    }
    if parts.username is not None:
        password_file = workdir / f"{job}_password"
        password_file.write_text(unquote(parts.password or ""))
        password_file.chmod(0o600)
        config["basic_auth"] = {"username": unquote(parts.username), "password_file": str(password_file)}
    return config


class PrometheusServer:
    """One Prometheus process with scrape and evaluation every second, and its HTTP API."""

    def __init__(self, workdir: Path, targets: dict[str, str], rule_files: Iterable[Path]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.jobs = sorted(targets)
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(Path(path).resolve()) for path in rule_files],
            "scrape_configs": [_scrape_config(job, url, workdir) for job, url in sorted(targets.items())],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._process: subprocess.Popen[bytes] | None = None
        self._http = requests.Session()

    def start(self, timeout: float = 30) -> None:
        binary = required_tool("prometheus", "prometheus")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait(lambda: self._get("/-/ready").status_code == 200, timeout, "Prometheus to be ready")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        self._process = None
        self._http.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def _get(self, path: str, **params: str) -> requests.Response:
        return self._http.get(self.url + path, params=params, timeout=5)

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise AssertionError(f"Prometheus exited while waiting for {what}:\n{self.log_tail()}")
            try:
                if predicate():
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.log_tail()}")
            time.sleep(0.2)

    def query(self, promql: str) -> dict[str, Any]:
        """The API's JSON answer for an instant query now; status "error" is returned, not raised."""
        response = self._get("/api/v1/query", query=promql)
        return response.json()  # type: ignore[no-any-return]

    def targets(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets", state="active").json()["data"]["activeTargets"]  # type: ignore[no-any-return]

    def rules(self) -> list[dict[str, Any]]:
        groups = self._get("/api/v1/rules").json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def wait_until_targets_up(self, timeout: float = 20) -> None:
        def all_up() -> bool:
            targets = self.targets()
            return sorted(t["labels"]["job"] for t in targets if t["health"] == "up") == self.jobs

        self._wait(all_up, timeout, f"targets {self.jobs} to be up (see {self.url}/targets)")

    def wait_for_scrape_after(self, moment: float, timeout: float = 10) -> None:
        """Block until every target was scraped, successfully, after the wall-clock `moment`."""

        def scraped() -> bool:
            for target in self.targets():
                last = datetime.fromisoformat(target["lastScrape"].replace("Z", "+00:00")).timestamp()
                if target["health"] != "up" or last <= moment:
                    return False
            return True

        self._wait(scraped, timeout, "a scrape of every target")

    def wait_until_rules_evaluated(self, timeout: float = 10) -> None:
        self._wait(
            lambda: all(rule.get("lastEvaluation", "0001").startswith("20") for rule in self.rules()),
            timeout,
            "every rule to be evaluated",
        )
