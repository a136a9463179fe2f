"""The refresh task (a thin adapter over shared/refresher.py) and worker lifecycle hooks."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Task, current_app, shared_task, signals
from celery.worker.request import Request

from shared import metrics
from shared.keys import Keyspace
from shared.metrics_dir import HERD_MEMBER
from shared.origin_slots import OriginSlots
from shared.queuebound import CONSUMING_BEAT_SECONDS
from shared.refresher import Refresher
from shared.refreshlog import RefreshReport
from shared.store import CacheStore, make_redis
from shared.tasks import REFRESH_MANY_TASK, REFRESH_TASK, RefreshRequest, requests_of
from workers.app import WorkerConfig

log = logging.getLogger("herdless.worker")

# Celery's own line per task ("received", "succeeded in", "raised expected", "Discarding revoked
# task" for each expired refresh), at INFO: two lines per refresh. The refresh log
# (shared/refreshlog.py) and herdless_refresh_total say what matters instead; errors Celery logs
# (an unexpected exception, a lost worker) are WARNING or ERROR and still appear.
CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.worker.request")


def quiet_celery_task_lines(log_level: str) -> None:
    if log_level.lower() != "debug":
        for name in CELERY_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


class RefreshFailed(Exception):
    """A refresh that stored nothing because the origin or its breaker failed. Raised after all
    bookkeeping (metrics, cooldown, "error" published), so that the task's state is FAILURE in
    Flower with the reason as its exception; the message is still acknowledged (acks_on_failure)
    and never retried. One string argument: JSON-serialisable, like everything Celery moves."""


# This process's engine: built by the worker_process_init / worker_init signals from the app's
# configuration (workers/app.py), never at import. Celery's main process needs one too: it
# acknowledges messages (RefreshTaskRequest) and runs refreshes itself in the gevent, threads
# and solo pools.
_engine: Refresher | None = None
# At most WORKER_CONCURRENCY refreshes at once in a gevent or threads worker, whether their keys
# came one per message or several (REFRESH_MANY_TASK: shared/admitbatch.py); None under prefork,
# where a process takes one message at a time and runs its keys side by side.
_running: threading.BoundedSemaphore | None = None


def worker_engine() -> Refresher:
    if _engine is None:
        raise RuntimeError("no refresh engine in this process: the worker's start-up signals build it")
    return _engine


def _run_one(request: RefreshRequest) -> RefreshReport:
    if _running is None:
        return worker_engine().run(request)
    with _running:
        return worker_engine().run(request)


def _build_engine(config: WorkerConfig) -> Refresher:
    global _running
    settings, namespaces = config.settings, config.namespaces
    if settings.worker_pool != "prefork":
        _running = threading.BoundedSemaphore(settings.worker_concurrency)
    metrics.init_worker_series(namespaces, {ns.origin_name for ns in namespaces.values()})
    # Every concurrent refresh holds at most one connection at a time, its renewer another;
    # past that a caller waits for one rather than failing mid-refresh.
    client = make_redis(
        settings,
        pool_size=2 * settings.worker_concurrency + 16,
        pool_wait_seconds=max(2.0, settings.lease_ttl_seconds / 3),
        socket_timeout=max(2.0, settings.lease_ttl_seconds / 3),
    )
    return Refresher(
        settings,
        namespaces,
        CacheStore(client, settings),
        slots=lambda origin_name: OriginSlots(client, origin_name, Keyspace.of(settings)),
    )


@signals.worker_init.connect
def _set_up_main_process(sender: Any = None, **_: Any) -> None:
    # A Redis client must not cross a fork: a prefork child builds its own (below).
    global _engine
    app = sender.app
    quiet_celery_task_lines(app.herdless.settings.log_level)
    # Celery resolves a task's (disabled) result backend per thread, and under gevent every
    # greenlet is a thread: each refresh built one to call its no-op cleanup (py-spy: 4 % of
    # the worker's CPU). The task keeps the app's one.
    for name in (REFRESH_TASK, REFRESH_MANY_TASK):
        app.tasks[name].backend = app.backend
    _engine = _build_engine(app.herdless)
    _start_consuming_beat(_engine)
    if not os.environ.get(HERD_MEMBER):  # a herd serves its members' metrics itself
        from workers.metrics_server import start_metrics_server

        start_metrics_server(app.herdless, app)


def _start_consuming_beat(engine: Refresher) -> None:
    # Tells the queue's bound that workers consume (shared/queuebound.py): only then may it
    # forget a waiting message the broker lost. One beat per worker host, from its main process.
    def beat() -> None:
        while True:
            try:
                engine.queue.consuming()
            except Exception:  # noqa: BLE001 - Redis blinked; the next beat tries again
                log.warning("could not record that this worker consumes")
            stop.wait(CONSUMING_BEAT_SECONDS)

    stop = threading.Event()
    threading.Thread(target=beat, name="consuming-beat", daemon=True).start()


@signals.worker_process_init.connect
def _set_up_pool_process(**_: Any) -> None:
    global _engine
    _engine = _build_engine(current_app.herdless)


class RefreshTaskRequest(Request):  # type: ignore[misc]
    """Celery's request of a refresh task, as the worker's main process sees it.

    The key's queued marker lives as long as the task's message (see shared/refresher.py): once
    the message is acknowledged or dropped the marker goes, and when the message goes back to
    the queue (a pool process died mid-refresh: reject_on_worker_lost) the marker says so."""

    def acknowledge(self) -> None:
        already = self.acknowledged
        super().acknowledge()
        if not already:
            self._tell_engine(requeued=False)

    def reject(self, requeue: bool = False) -> None:
        already = self.acknowledged
        if requeue and not already:
            self._tell_engine(requeued=True)  # before the message is visible in the queue again
        super().reject(requeue=requeue)
        if not requeue and not already:
            self._tell_engine(requeued=False)

    def _tell_engine(self, *, requeued: bool) -> None:
        reqs = requests_of(self.type, self.kwargs or {})  # type: the task's own name, never a shadow
        if not requeued:
            try:
                worker_engine().finished_many(reqs)  # every key of the message in one round trip
            except Exception:  # noqa: BLE001 - Redis down: the markers expire on their own
                log.warning("could not clear the queued markers of %d refreshes", len(reqs))
            return
        for req in reqs:
            try:
                worker_engine().requeued(req)
            except Exception:  # noqa: BLE001 - Redis down: the marker expires on its own
                log.warning("could not update the queued marker of a refresh")


class RefreshTask(Task):  # type: ignore[misc]
    Request = RefreshTaskRequest


@shared_task(
    name=REFRESH_TASK,
    base=RefreshTask,
    acks_late=True,
    # A failed refresh is acknowledged like a good one: its cooldown decides when the key is
    # tried again, never a redelivery (Celery's default, spelled out because FAILURE is ours).
    acks_on_failure=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # Expected: Celery logs it without a traceback (and at INFO, which quiet_celery_task_lines hides).
    throws=(RefreshFailed,),
)
def refresh(namespace: str, key: str, token: str, reason: str, won_at_ms: int) -> str:
    """Recompute one key. Enqueued only by the request that won its lease."""
    report = _run_one(RefreshRequest(namespace, key, token, reason, int(won_at_ms)))
    if report.failed:
        raise RefreshFailed(report.describe())
    return report.outcome


@shared_task(
    name=REFRESH_MANY_TASK,
    base=RefreshTask,
    acks_late=True,
    acks_on_failure=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    throws=(RefreshFailed,),
)
def refresh_many(namespace: str, items: list[list[Any]]) -> str:
    """Recompute several keys of one namespace, each as `refresh` would, side by side: the keys a
    web process admitted together (shared/admitbatch.py), or a batch-origin namespace's, whose
    runs join one batch of the namespace's origin (shared/batch_refresh.py) and so all start at
    once (no WORKER_CONCURRENCY bound: they wait for each other)."""
    requests = requests_of(REFRESH_MANY_TASK, {"namespace": namespace, "items": items})
    reports: list[Any] = [None] * len(requests)
    engine = worker_engine()
    ns = engine.namespaces.get(namespace)
    collector = engine.batched.collector(ns) if ns is not None and ns.batch is not None else None
    if collector is not None:
        collector.announce([r.key for r in requests])

    raised: list[BaseException] = []

    def run(i: int) -> None:
        try:
            reports[i] = engine.run(requests[i]) if collector is not None else _run_one(requests[i])
        except BaseException as exc:  # noqa: BLE001 - raised by the task below, as a single refresh's
            raised.append(exc)
        finally:
            if collector is not None:
                collector.forget(requests[i].key)

    # A thread per key (a greenlet under gevent): the keys must wait in one batch together.
    threads = [threading.Thread(target=run, args=(i,), name="refresh-many") for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if raised:  # a thread's own exception would only be printed, and the task report success
        raise raised[0]
    failed = [report.describe() for report in reports if report is not None and report.failed]
    if failed:
        raise RefreshFailed(f"{len(failed)} of {len(requests)} keys failed: {failed[0]}")
    return f"{len(requests)} keys"


@signals.task_revoked.connect
def _count_expired(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    # A refresh that waited past its lease is discarded unrun (the task's `expires`).
    # `sender` is the task; `request` its context, whose kwargs name the key.
    name = getattr(sender, "name", None)
    if expired and name in (REFRESH_TASK, REFRESH_MANY_TASK):
        for req in requests_of(name, getattr(request, "kwargs", None) or {}):
            worker_engine().discard_expired(req)


@signals.worker_shutting_down.connect
def _mark_running_refreshes_queued(**_: Any) -> None:
    # Stopping (SIGTERM, Ctrl-C) with refreshes running: closing the broker connection
    # restores unacknowledged messages to the queue without a reject. Their markers become
    # waiting ones now, so reads keep off those keys however long the runs' leases have run
    # out; a run that still finishes is acknowledged and clears its marker.
    from celery.worker import state

    for request in list(state.active_requests):
        # `type`, not `name`: a proxied URL's task is shown under a shadow name.
        for req in requests_of(getattr(request, "type", None), getattr(request, "kwargs", None) or {}):
            try:
                worker_engine().requeued(req)
            except Exception:  # noqa: BLE001 - Redis down while stopping: nothing more to do
                log.warning("could not mark a running refresh as queued while stopping")


@signals.worker_shutdown.connect
@signals.worker_process_shutdown.connect
def _last_refresh_summary(**_: Any) -> None:
    # The refreshes since the last periodic summary, before this process goes.
    if _engine is not None:
        _engine.refresh_log.flush()


@signals.worker_shutdown.connect
def _remove_metrics_dir(**_: Any) -> None:
    # The main process, last: its metrics directory goes with it.
    from shared.metrics_dir import remove_owned_metrics_dir

    remove_owned_metrics_dir()


@signals.worker_process_shutdown.connect
def _mark_dead(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


@signals.after_setup_logger.connect
def _quiet_task_lines(**_: Any) -> None:
    config = getattr(current_app, "herdless", None)
    if config is not None:
        quiet_celery_task_lines(config.settings.log_level)
