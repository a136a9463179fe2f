"""Worker entry point: parses the settings and namespaces once, gives the worker a fresh metrics
directory, builds the Celery app and runs `celery worker` in this process. With
WORKER_PROCESSES=N > 1 it runs a herd instead: N such workers (distinct Celery hostnames) over
one metrics directory, and one /metrics endpoint on WORKER_METRICS_PORT that sums them.

python -m workers [extra celery worker options]
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from shared.metrics_dir import HERD_MEMBER
from shared.settings import Settings, load_settings

if TYPE_CHECKING:
    from shared.namespaces import Namespace


# Celery's own global option, which goes before `worker`: no start-up banner (`make run` passes it
# and prints the queue in its ready block instead).
QUIET = ("--quiet", "-q")


def celery_worker_argv(settings: Settings, extra: list[str]) -> list[str]:
    from shared.keys import Keyspace  # imports redis: only once gevent has patched (main)

    quiet = [arg for arg in extra if arg in QUIET][:1]
    extra = [arg for arg in extra if arg not in QUIET]
    return [
        *quiet,
        "worker",
        "--loglevel",
        settings.log_level.upper(),
        "--pool",
        settings.worker_pool,
        "--concurrency",
        str(settings.worker_concurrency),
        "--queues",
        Keyspace.of(settings).queue,
        # No --task-events: events are sent once a monitor asks (shared/tasks.py, Flower does).
        "--without-gossip",
        "--without-mingle",
        *extra,
    ]


def quiet_what_nobody_can_act_on() -> None:
    """Celery's SecurityWarning when run as root guards against a pickle payload running as
    root; this worker accepts JSON only (tests/security/test_pickle_refused.py), and root is
    what a container or a VM of one's own runs as. The remote-control lines ("Events of group
    {task} enabled by remote", each time Flower starts, "pidbox: Connected") say nothing to act on."""
    import logging
    import warnings

    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", category=SecurityWarning)
    for name in ("celery.worker.control", "celery.worker.pidbox"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_worker(settings: Settings, namespaces: dict[str, Namespace], extra: list[str]) -> None:
    from shared.metrics_dir import own_metrics_dir
    from workers.app import make_celery

    quiet_what_nobody_can_act_on()
    if not os.environ.get(HERD_MEMBER):
        # Ours to remove when the worker stops (workers/tasks.py): starts leave no directory behind.
        own_metrics_dir("worker")
    make_celery(settings, namespaces).worker_main(celery_worker_argv(settings, extra))


def main() -> None:
    settings = load_settings()  # stop here, naming the variable, if a setting is bad
    herd = settings.worker_processes > 1 and not os.environ.get(HERD_MEMBER)
    if not herd:
        # What `celery worker` does first: patch for gevent before anything else is imported
        # (redis, urllib3, the origin callables), or a gevent pool's refreshes block each other.
        from celery import maybe_patch_concurrency

        maybe_patch_concurrency([*sys.argv[1:], "--pool", settings.worker_pool])
    from shared.namespaces import NamespaceConfigError, load_namespaces

    try:
        namespaces = load_namespaces(settings)
    except NamespaceConfigError as exc:
        sys.exit(str(exc))  # one line: file, namespace, field (or the module that does not import)
    if herd:
        from workers.herd import run_herd

        sys.exit(run_herd(settings, namespaces, sys.argv[1:]))
    run_worker(settings, namespaces, sys.argv[1:])


if __name__ == "__main__":
    main()
