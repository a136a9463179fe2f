"""`make run` itself: the whole stack starts in the foreground, serves, and Ctrl-C stops every
process it started."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import requests

from tests.stack import ROOT, RedisServer, free_port, port_open, wait_until


def test_make_run_serves_and_ctrl_c_leaves_no_process_behind(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    ports = {name: free_port() for name in ("WEB_PORT", "ORIGIN_PORT", "WORKER_METRICS_PORT", "FLOWER_PORT")}
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({name: str(port) for name, port in ports.items()})
    env.update(
        {
            # A private Redis and private ports: other stacks on this machine are left alone.
            "REDIS_URL": redis.url,
            "WORKER_METRICS_URL": f"http://127.0.0.1:{ports['WORKER_METRICS_PORT']}/metrics",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        }
    )
    (tmp_path / "metrics").mkdir()
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        # Its own session, like a terminal's foreground job; installing is not under test (-o).
        make = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/.installed", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{ports['WEB_PORT']}/v1/cache/demo/make-run"

        def served() -> bool:
            assert make.poll() is None, log.read_text(errors="replace")[-3000:]
            return requests.get(url, timeout=10).status_code == 200

        wait_until(served, 90, "make run to serve a cold key", interval=0.5)
        assert requests.get(url, timeout=5).headers["X-Cache"] == "HIT"
        flower = f"http://127.0.0.1:{ports['FLOWER_PORT']}/healthcheck"
        wait_until(lambda: requests.get(flower, timeout=2).ok, 60, "Flower", interval=0.5)
        started = psutil.Process(make.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for role in ("honcho", "gunicorn", "workers", "loadtest.origin", "flower"):
            assert role in names, names

        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C: SIGINT to the foreground process group
        make.wait(60)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait(10)
        redis.stop()

    def all_gone() -> bool:
        return not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    wait_until(all_gone, 10, "every process make run started to exit")
    assert not any(port_open(port) for port in ports.values()), ports
