"""Each role's prometheus multiprocess directory: made fresh by the process that starts a role's
processes (a gunicorn master, `python -m workers`), removed when it stops, so that starting and
stopping leaves no directory behind. Standard library only: gunicorn's master imports this
before it forks the workers that gevent patches."""

from __future__ import annotations

import os
import shutil
import tempfile

# Names the directory `python -m workers` made for this worker (and only that one).
OWNED_METRICS_DIR = "HERDLESS_OWNED_METRICS_DIR"
# Set in the workers of a herd (WORKER_PROCESSES > 1, workers/herd.py): the herd owns the metrics
# directory and serves /metrics, so a member does neither.
HERD_MEMBER = "HERDLESS_WORKER_HERD_MEMBER"


def make_metrics_dir(role: str) -> str:
    """A fresh directory for the processes of `role` this process starts, under
    PROMETHEUS_MULTIPROC_DIR or the temp dir; every process started after this call (this one's
    children, and this process itself) keeps its metric files there."""
    base = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
    metrics_dir = os.path.join(base, f"herdless-{role}-{os.getpid()}")
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return metrics_dir


def own_metrics_dir(role: str) -> None:
    """make_metrics_dir, remembered as this process's to remove (remove_owned_metrics_dir)."""
    os.environ[OWNED_METRICS_DIR] = make_metrics_dir(role)


def remove_owned_metrics_dir() -> None:
    owned = os.environ.get(OWNED_METRICS_DIR)
    if owned and owned == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
