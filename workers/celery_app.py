"""The worker's Celery app (`celery -A workers.celery_app`), configured from shared/tasks.py."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared import rates
from shared.namespaces import load_namespaces
from shared.settings import Settings, get_settings
from shared.store import make_redis
from shared.tasks import QUEUE, celery_config


def make_celery(settings: Settings) -> Celery:
    namespaces = load_namespaces(settings)
    longest = max((ns.origin_timeout_seconds for ns in namespaces.values()), default=None)
    app = Celery("herdless", include=["workers.tasks"])
    app.conf.update(
        # Each running refresh may ack or send an event at once, plus the consumer and heartbeats.
        celery_config(settings, longest, broker_connections=2 * settings.worker_concurrency + 16),
        task_queues=[Queue(QUEUE, routing_key=QUEUE, queue_arguments={"x-max-priority": 10})],
        worker_consumer="workers.consumer:PromptReconnectConsumer",
    )
    # Origin calls, counted where they happen, reach the status page's last minute (each pool
    # process flushes through a client of its own, made after the fork).
    rates.RECORDER.configure(lambda: make_redis(settings, pool_size=2))
    return app


app = make_celery(get_settings())
