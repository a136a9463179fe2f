"""Celery tasks and worker lifecycle hooks (metrics endpoint, dead-process cleanup)."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

from shared import metrics
from shared.settings import get_settings
from workers.celery_app import REFRESH_TASK, app
from workers.refresh import get_context, run_refresh

log = logging.getLogger("herdless.worker")


@app.task(name=REFRESH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def refresh(namespace: str, key: str, token: str, reason: str, won_at_ms: int) -> str:
    """Recompute one key. Enqueued only by the request that won its lease."""
    return run_refresh(get_context(get_settings()), namespace, key, token, int(won_at_ms))


@signals.task_revoked.connect
def _count_expired(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    # A refresh that waited past its lease is discarded unrun (the task's `expires`).
    # `sender` is the task; `request` its context, whose kwargs name the key.
    if expired and getattr(sender, "name", None) == REFRESH_TASK:
        kwargs = getattr(request, "kwargs", None) or {}
        ctx = get_context(get_settings())
        ns = ctx.namespaces.get(kwargs.get("namespace", ""))
        if ns is not None:
            metrics.REFRESHES.labels(ns.name, "expired").inc()
            # Its message has left the queue unrun: let the next read enqueue a fresh refresh.
            ctx.store.abandon(ns, str(kwargs.get("key", "")), str(kwargs.get("token", "")))


@signals.worker_process_shutdown.connect
def _mark_dead(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


@signals.worker_init.connect
def _start_metrics_server(**_: Any) -> None:
    from workers.metrics_server import start_metrics_server

    start_metrics_server(get_settings(), app)
