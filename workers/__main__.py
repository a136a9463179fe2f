"""Worker entry point: parses the settings and namespaces once, gives the worker a fresh metrics
directory, builds the Celery app and runs `celery worker` in this process. With
WORKER_PROCESSES=N > 1 it runs a herd instead: N such workers (distinct Celery hostnames) over
one metrics directory, and one /metrics endpoint on WORKER_METRICS_PORT that sums them.

python -m workers [extra celery worker options]
"""

from __future__ import annotations

import os
import sys

from shared.metrics_dir import own_metrics_dir
from shared.namespaces import Namespace, NamespaceConfigError, load_namespaces
from shared.settings import Settings, load_settings
from workers.app import HERD_MEMBER, make_celery


def celery_worker_argv(settings: Settings, extra: list[str]) -> list[str]:
    return [
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
        *extra,
    ]


def run_worker(settings: Settings, namespaces: dict[str, Namespace], extra: list[str]) -> None:
    if not os.environ.get(HERD_MEMBER):
        # Ours to remove when the worker stops (workers/tasks.py): starts leave no directory behind.
        own_metrics_dir("worker")
    make_celery(settings, namespaces).worker_main(celery_worker_argv(settings, extra))


def main() -> None:
    settings = load_settings()  # stop here, naming the variable, if a setting is bad
    try:
        namespaces = load_namespaces(settings)
    except NamespaceConfigError as exc:
        sys.exit(str(exc))  # one line: file, namespace, field (or the module that does not import)
    if settings.worker_processes > 1 and not os.environ.get(HERD_MEMBER):
        from workers.herd import run_herd

        sys.exit(run_herd(settings, namespaces, sys.argv[1:]))
    run_worker(settings, namespaces, sys.argv[1:])


if __name__ == "__main__":
    main()
