"""A herd of Celery workers on one host (WORKER_PROCESSES > 1): N `python -m workers` processes
over one prometheus multiprocess directory, and one /metrics endpoint that shows them all.

The herd forwards stop signals to its members and exits when they have all gone; the first
member to exit stops the others (a herd is up only as a whole). A gevent worker uses one core;
a herd is how one host gives every core to refreshes with one command and one scrape target."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from types import FrameType

from prometheus_client import multiprocess

from shared.metrics_dir import HERD_MEMBER, OWNED_METRICS_DIR, own_metrics_dir, remove_owned_metrics_dir
from shared.namespaces import Namespace
from shared.settings import Settings
from workers.app import WorkerConfig, make_celery
from workers.metrics_server import start_metrics_server

log = logging.getLogger("herdless.worker")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def member_argv(extra: list[str], index: int) -> list[str]:
    """`extra` with a Celery hostname of member `index`'s own: `--hostname NAME@HOST` becomes
    `NAME-INDEX@HOST` (and `worker-INDEX@%h` when none is given)."""
    argv = list(extra)
    for i, arg in enumerate(argv):
        for flag in ("--hostname", "-n"):
            if arg == flag and i + 1 < len(argv):
                argv[i + 1] = _numbered(argv[i + 1], index)
                return argv
            if arg.startswith(flag + "="):
                argv[i] = f"{flag}={_numbered(arg[len(flag) + 1 :], index)}"
                return argv
    return [*argv, "--hostname", f"worker-{index}@%h"]


def _numbered(hostname: str, index: int) -> str:
    name, at, host = hostname.partition("@")
    return f"{name}-{index}{at}{host}"


def run_herd(settings: Settings, namespaces: dict[str, Namespace], extra: list[str]) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    own_metrics_dir("worker")
    # The herd's own app only reads the queue depth for /metrics; it consumes nothing.
    start_metrics_server(WorkerConfig(settings, namespaces), make_celery(settings, namespaces))
    # A member neither owns (nor removes) the herd's directory.
    env = {**{k: v for k, v in os.environ.items() if k != OWNED_METRICS_DIR}, HERD_MEMBER: "1"}
    members = {
        member.pid: member
        for member in (
            subprocess.Popen([sys.executable, "-m", "workers", *member_argv(extra, i)], env=env)
            for i in range(1, settings.worker_processes + 1)
        )
    }
    alive = set(members)
    stopping: list[int] = []  # the stop signals forwarded so far

    def forward(signum: int, _frame: FrameType | None = None) -> None:
        # Ctrl-C reaches the members too (one process group): a second SIGINT would make their
        # shutdown a cold one, so they get SIGTERM, a warm shutdown however often it comes.
        signum = signal.SIGTERM if signum == signal.SIGINT else signum
        stopping.append(signum)
        for pid in list(alive):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    log.info("worker herd of %d processes: %s", len(members), " ".join(map(str, members)))
    codes: list[int] = []
    try:
        while alive:
            pid, status = os.wait()
            if pid not in alive:
                continue
            alive.discard(pid)
            members[pid].returncode = code = os.waitstatus_to_exitcode(status)
            codes.append(code)
            # Its counters stay in the sums; its live gauges go.
            multiprocess.mark_process_dead(pid)
            if code != 0 or not stopping:
                log.warning("herd member %d exited (%d)", pid, code)
            if alive and not stopping:
                log.warning("stopping the herd: a member exited")
                forward(signal.SIGTERM)
    finally:
        for pid in alive:
            members[pid].kill()
        remove_owned_metrics_dir()
    return 0 if all(code == 0 for code in codes) else 1
