"""Two clones' `make run`s on one Redis: each checkout gets a HERDLESS_PREFIX of its own, so one
clone's worker never takes the other's refresh tasks (scripts/run_stack.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import requests

from shared.keys import Keyspace
from shared.tasks import broker_lists
from tests.e2e.test_make_run import stack_env
from tests.stack import ROOT, RedisServer, free_port, wait_until

PORT_NAMES = ("WEB_PORT", "ORIGIN_PORT", "WORKER_METRICS_PORT")


class Clone:
    """Another checkout of this repository (its own path, this venv) running `scripts/run.sh`."""

    def __init__(self, path: Path, redis: RedisServer, processes: list[str]) -> None:
        (path / "scripts").mkdir(parents=True)
        for script in ("run.sh", "run_stack.py"):
            shutil.copy2(ROOT / "scripts" / script, path / "scripts" / script)
        (path / ".venv").symlink_to(ROOT / ".venv")
        self.ports = {name: free_port() for name in PORT_NAMES}
        self.log = path / "run.log"
        env = stack_env(
            self.ports,
            REDIS_URL=redis.url,
            ENV_FILE=str(path / "none.env"),
            WEB_CONCURRENCY="1",
            COLD_WAIT_TIMEOUT_SECONDS="1",
            LEASE_TTL_SECONDS="30",  # a task waits in the queue that long before it expires
        )
        env.pop("HERDLESS_PREFIX", None)
        self.shell = subprocess.Popen(
            ["bash", "-c", f"scripts/run.sh {' '.join(processes)} > {self.log} 2>&1"],
            cwd=path,
            env=env,
            start_new_session=True,
        )

    def ready_block(self) -> str:
        assert self.shell.poll() is None, self.log.read_text(errors="replace")[-3000:]
        text = self.log.read_text(errors="replace")
        return text[text.index("herdless is ready") :] if "herdless is ready" in text else ""

    def prefix(self) -> str:
        found = re.search(r"Redis names +(\S+):… \(HERDLESS_PREFIX\)", self.ready_block())
        assert found, self.ready_block()
        return found[1]

    def get(self, key: str) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.ports['WEB_PORT']}/v1/cache/demo/{key}", timeout=15)

    def origin_calls(self) -> dict[str, int]:
        stats = requests.get(f"http://127.0.0.1:{self.ports['ORIGIN_PORT']}/stats", timeout=5).json()
        return stats["per_key"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.shell.poll() is None:
            os.killpg(self.shell.pid, signal.SIGTERM)
            try:
                self.shell.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.shell.pid, signal.SIGKILL)
                self.shell.wait(10)


def test_two_clones_make_run_on_one_redis_never_share_the_refresh_queue(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()  # the Redis both clones' REDIS_URL names
    # A runs no worker: its task waits in its queue, where B's worker must not take it.
    clones = [
        Clone(tmp_path / "a", redis, ["origin", "web"]),
        Clone(tmp_path / "b", redis, ["origin", "web", "worker"]),
    ]
    a, b = clones
    try:
        for clone in clones:
            wait_until(clone.ready_block, 90, "make run to say it is ready", interval=0.3)
        assert a.get("queued-in-a").status_code == 503  # enqueued; no worker of A runs it
        # B's worker, having served B's own cold key, would have taken A's earlier task first
        # had both clones used one queue.
        wait_until(lambda: b.get("served-in-b").status_code == 200, 30, "B's worker to serve B's key")
        assert "queued-in-a" not in b.origin_calls()
        assert a.origin_calls() == {}
        # Each clone has a prefix of its own, and A's task still waits in A's queue.
        prefix_a, prefix_b = a.prefix(), b.prefix()
        assert prefix_a != prefix_b and prefix_a.startswith("hl-") and prefix_b.startswith("hl-")
        client = redis.client()
        assert sum(client.llen(name) for name in broker_lists(Keyspace(prefix_a, 0))) == 1
    finally:
        for clone in clones:
            clone.stop()
        redis.stop()
