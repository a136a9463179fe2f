"""A worker that cannot serve its metrics stops at start, with one line naming the port."""

from __future__ import annotations

import os
import socket
import subprocess

from tests.stack import PYTHON, ROOT, RedisServer


def test_a_worker_whose_metrics_port_is_taken_stops_at_start_naming_the_port(redis_server: RedisServer) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "REDIS_", "CELERY_"))},
            "REDIS_URL": redis_server.url,
            "WORKER_METRICS_PORT": str(port),
        }
        done = subprocess.run([PYTHON, "-m", "workers"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("herdless:")]
    assert lines == [
        f"herdless: the worker's metrics port {port} is not free (Address already in use); "
        "set WORKER_METRICS_PORT to a free port"
    ], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
