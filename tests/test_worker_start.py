"""A worker that cannot serve its metrics stops at start, with one line naming the port, and a
worker leaves no metrics directory behind when it stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.stack import PYTHON, ROOT, RedisServer, free_port


def _worker_env(redis_server: RedisServer, tmp_path: Path, **more: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WORKER_", "REDIS_", "CELERY_", "PROMETHEUS_", "TMPDIR"))
    }
    # No PROMETHEUS_MULTIPROC_DIR: the worker makes its own under TMPDIR.
    return {**env, "REDIS_URL": redis_server.url, "TMPDIR": str(tmp_path), **more}


def test_a_worker_whose_metrics_port_is_taken_stops_at_start_naming_the_port(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _worker_env(redis_server, tmp_path, WORKER_METRICS_PORT=str(port))
        done = subprocess.run([PYTHON, "-m", "workers"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("herdless:")]
    assert lines == [
        f"herdless: the worker's metrics port {port} is not free (Address already in use); "
        "set WORKER_METRICS_PORT to a free port"
    ], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert list(tmp_path.glob("herdless-worker-*")) == []


def test_a_stopped_worker_leaves_no_metrics_directory_behind(redis_server: RedisServer, tmp_path: Path) -> None:
    env = _worker_env(redis_server, tmp_path, WORKER_METRICS_PORT=str(free_port()), WORKER_POOL="prefork")
    env["WORKER_CONCURRENCY"] = "1"
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([PYTHON, "-m", "workers"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        assert len(list(tmp_path.glob("herdless-worker-*"))) == 1  # made at start
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(45)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker did not stop within 45 s of SIGTERM:\n" + log.read_text()[-3000:])
        assert code == 0, log.read_text()[-2000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    assert list(tmp_path.glob("herdless-worker-*")) == []
