"""Child processes in process groups of their own, free loopback ports, and waiting on a deadline."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# SIGTERM to SIGKILL for a stack of tests or a bench: an idle gevent Celery worker takes about
# 4 s to act on SIGTERM, gunicorn's graceful timeout comes on top.
GRACE_SECONDS = 15.0


class LaunchError(RuntimeError):
    """A process did not start, or exited while it was waited for."""


class TimedOut(LaunchError):
    """What was waited for did not happen before the deadline."""


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A loopback port nothing listens on now, never one this process handed out before: ports
    are chosen before the processes that bind them start, and the kernel may offer a port that
    was just handed out but not bound yet again (a stack's origin and its worker's metrics server
    once got the same one)."""
    with _handed_out_lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    """Whether GET url answers 2xx within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.05,
    process: Process | None = None,
) -> Any:
    """Poll predicate until it returns something truthy, and return that. Past `timeout`, raise
    TimedOut naming `what` (and the predicate's last error); when `process` exits meanwhile,
    raise LaunchError at once with the tail of its log."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last_exc = exc
        if process is not None and not process.alive():
            raise LaunchError(f"{what}: {process.name} exited; log tail:\n{process.tail()}")
        time.sleep(interval)
    message = f"timed out after {timeout:g}s waiting for {what}"
    if last_exc is not None:
        message += f" (last error: {last_exc!r})"
    if process is not None:
        message += f"; {process.name} log tail:\n{process.tail()}"
    raise TimedOut(message)


class Process:
    """A child that leads a process group of its own (so that a signal reaches its pool children
    too), started from the checkout with stdin closed. Its output goes to <logdir>/<name>.log, or,
    with no logdir, to a pipe (`stdout`) for a supervisor that relays it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        logdir: Path | None,
        *,
        own_session: bool = True,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log" if logdir is not None else None
        # A session of its own by default: no controlling terminal, so nothing of a terminal (its
        # Ctrl-C, its hang-up) reaches the child but what we send. A supervisor that stays in
        # its terminal's session (scripts/run_stack.py) asks for a process group only.
        group = {"start_new_session": True} if own_session else {"process_group": 0}
        if self.log_path is None:
            self.popen = self._start(argv, env, subprocess.PIPE, group, preexec_fn)
        else:
            with open(self.log_path, "ab") as log:
                self.popen = self._start(argv, env, log, group, preexec_fn)

    @staticmethod
    def _start(
        argv: Sequence[str],
        env: dict[str, str],
        stdout: Any,
        group: dict[str, Any],
        preexec_fn: Callable[[], None] | None,
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
            **group,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything it logged so far ("" with no log file)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def send(self, sig: int) -> None:
        """Signal the whole process group (a Celery worker and its pool children)."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # gone already

    def terminate(self) -> None:
        """SIGTERM to the group, without waiting: stop several at once, then wait_stopped each."""
        if self.alive():
            self.send(signal.SIGTERM)

    def stop(self, sig: int = signal.SIGTERM, grace: float = GRACE_SECONDS) -> None:
        if self.alive():
            self.send(sig)
        self.wait_stopped(grace)

    def wait_stopped(self, grace: float = GRACE_SECONDS) -> None:
        """Wait for an exit already asked for; SIGKILL the group past `grace` seconds."""
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait(5)


def stop_all(
    processes: Sequence[Process],
    grace: float = GRACE_SECONDS,
    signal_for: Callable[[Process], int] = lambda process: signal.SIGTERM,
) -> None:
    """Tell every process at once (each takes a second or more to shut down), then wait for each."""
    for process in processes:
        if process.alive():
            process.send(signal_for(process))
    for process in processes:
        process.wait_stopped(grace)
