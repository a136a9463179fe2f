"""The worker's /metrics endpoint (see shared/exposition.py for what it serves)."""

from __future__ import annotations

import logging

from celery import Celery
from prometheus_client import start_http_server

from shared.exposition import build_registry
from shared.metrics import init_worker_series
from shared.metrics_dir import remove_owned_metrics_dir
from shared.settings import url_host
from workers.app import WorkerConfig

log = logging.getLogger("herdless.worker")


def start_metrics_server(config: WorkerConfig, app: Celery) -> None:
    settings, namespaces = config.settings, config.namespaces
    # Every known series exists from the start, at 0, before any pool process did any work.
    init_worker_series(namespaces, {ns.origin_name for ns in namespaces.values()})
    registry = build_registry(settings, app, namespaces)
    try:
        start_http_server(settings.worker_metrics_port, addr=settings.bind_host, registry=registry)
    except OSError as exc:
        # A worker whose metrics nobody can scrape looks dead to Prometheus and Flower's
        # dashboards while it runs: stop at start instead, naming the port.
        remove_owned_metrics_dir()
        raise SystemExit(
            f"herdless: the worker's metrics port {settings.worker_metrics_port} is not free "
            f"({exc.strerror or exc}); set WORKER_METRICS_PORT to a free port"
        ) from None
    log.info("worker metrics on %s:%d/metrics", url_host(settings.bind_host), settings.worker_metrics_port)
