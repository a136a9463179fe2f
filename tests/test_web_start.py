"""The web tier starts and stops cleanly where the image runs it: with a HOME nobody may write."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.stack import PYTHON, ROOT, RedisServer, free_port, wait_until

# Root writes through permission bits (CAP_DAC_OVERRIDE): a test run as root (CI) drops that
# capability in the child, so a 0555 directory is as read-only to it as /app is to the image's user.
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_libc = ctypes.CDLL(None, use_errno=True)

# A line gunicorn or the app logs at WARNING or above, or any mention of an error or a traceback.
_TROUBLE = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|error|traceback", re.IGNORECASE)


def _obey_permission_bits() -> None:
    """Runs in the child between fork and exec; the capability stays gone after exec."""
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _as_unprivileged() -> Callable[[], None] | None:
    return _obey_permission_bits if os.geteuid() == 0 else None


@pytest.fixture
def read_only_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    # The premise of the test: the web tier's processes really cannot create anything in it.
    probe = subprocess.run(
        [PYTHON, "-c", f"import os; os.mkdir({str(home / '.gunicorn')!r})"],
        preexec_fn=_as_unprivileged(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe
    yield home
    home.chmod(0o755)


def test_web_tier_logs_no_error_when_home_is_read_only(tmp_path: Path, read_only_home: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("XDG_RUNTIME_DIR", "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_CMD_ARGS")
    }
    env.update(
        {
            # gunicorn puts its control socket in $XDG_RUNTIME_DIR, else $HOME/.gunicorn, as in the image.
            "HOME": str(read_only_home),
            "REDIS_URL": redis.url,
            "WEB_PORT": str(port),
            "WEB_CONCURRENCY": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    (tmp_path / "metrics").mkdir()
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log:
        web = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "-c", "web/gunicorn.conf.py", "web.app:create_app()"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_as_unprivileged(),
        )
    try:
        wait_until(
            lambda: web.poll() is not None or requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok,
            30,
            "web tier ready",
        )
        assert web.poll() is None, log_path.read_text()
        assert requests.get(f"http://127.0.0.1:{port}/v1/cache/nosuch/k", timeout=5).status_code == 404
    finally:
        # SIGTERM to the master alone, as docker stop (through tini) sends it; the configured
        # graceful timeout applies, so a loaded machine does not turn the stop into a SIGKILL.
        if web.poll() is None:
            web.send_signal(signal.SIGTERM)
        try:
            web.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
            web.wait(10)
        redis.stop()
    # A full start and a graceful stop: whatever gunicorn's helpers (its control socket thread
    # among them) failed to do in between has been logged by now.
    output = log_path.read_text(errors="replace")
    assert "Booting worker" in output, output
    assert web.returncode == 0, output
    trouble = [line for line in output.splitlines() if _TROUBLE.search(line)]
    assert not trouble, f"{trouble}\n--- whole log ---\n{output}"
