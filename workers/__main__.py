"""Worker entry point: gives the worker a fresh metrics directory, then execs `celery worker`.

python -m workers [extra celery worker options]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from shared.namespaces import NamespaceConfigError, load_namespaces
from shared.settings import load_settings
from workers.metrics_dir import OWNED_METRICS_DIR


def main() -> None:
    settings = load_settings()  # stop here, naming the variable, if a setting is bad
    try:
        load_namespaces(settings)
    except NamespaceConfigError as exc:
        sys.exit(str(exc))  # one line: file, namespace, field (or the module that does not import)
    base = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
    metrics_dir = os.path.join(base, f"herdless-worker-{os.getpid()}")
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # Ours to remove when the worker stops (workers/tasks.py), so starts leave no directory behind.
    os.environ[OWNED_METRICS_DIR] = metrics_dir
    argv = [
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--loglevel",
        settings.log_level.upper(),
        "--pool",
        settings.worker_pool,
        "--concurrency",
        str(settings.worker_concurrency),
        "--queues",
        "herdless",
        "--task-events",
        "--without-gossip",
        "--without-mingle",
        *sys.argv[1:],
    ]
    os.execvp(sys.executable, [sys.executable, "-m", *argv])


if __name__ == "__main__":
    main()
