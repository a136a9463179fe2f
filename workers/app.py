"""The worker's Celery app factory: one app, configured from shared/tasks.py, holding what each
worker process needs (settings and namespaces, parsed once by the entry module)."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from shared.exposition import configure_rate_recorder
from shared.namespaces import Namespace
from shared.settings import Settings
from shared.tasks import celery_config, longest_origin_timeout
from workers.broker import broker_transport
from workers.events import BufferedTaskEvents


@dataclass(frozen=True)
class WorkerConfig:
    settings: Settings
    namespaces: dict[str, Namespace]


class WorkerCelery(Celery):  # type: ignore[misc]
    """A Celery app that carries the worker's configuration to its signal handlers."""

    herdless: WorkerConfig


def make_celery(settings: Settings, namespaces: dict[str, Namespace]) -> WorkerCelery:
    app = WorkerCelery("herdless", include=["workers.tasks"])
    app.herdless = WorkerConfig(settings, namespaces)
    app.conf.update(
        # Each running refresh may ack or send an event at once, plus the consumer and heartbeats.
        celery_config(
            settings, longest_origin_timeout(namespaces), broker_connections=2 * settings.worker_concurrency + 16
        ),
        worker_consumer="workers.consumer:PromptReconnectConsumer",
    )
    # Task events go out in batches under gevent and threads too, as prefork's loop sends them.
    app.steps["consumer"].add(BufferedTaskEvents)
    transport = broker_transport(settings.celery_broker_url)
    if transport is not None:  # one redis-py client per pool, not one per ack (workers/broker.py)
        app.conf.broker_transport = transport
    # Origin calls, counted where they happen, reach the status page's last minute (each pool
    # process flushes through a client of its own, made after the fork).
    configure_rate_recorder(settings)
    return app
