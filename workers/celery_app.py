"""The Celery app shared by the web tier (which only sends) and the workers (which run refreshes)."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.settings import Settings, get_settings

QUEUE = "herdless"
REFRESH_TASK = "herdless.refresh"

# Priorities: a cold miss has someone waiting, a stale read has served old data, an early
# refresh is only a head start. Redis lists lower numbers first; AMQP serves higher first.
_PRIORITY_REDIS = {"miss": 0, "manual": 3, "stale": 3, "early": 6}
_PRIORITY_AMQP = {"miss": 9, "manual": 6, "stale": 6, "early": 3}


def refresh_priority(reason: str, settings: Settings) -> int:
    table = _PRIORITY_REDIS if settings.broker_is_redis else _PRIORITY_AMQP
    return table[reason]


def make_celery(settings: Settings) -> Celery:
    app = Celery("herdless", broker=settings.celery_broker_url, include=["workers.tasks"])
    # A restored (unacked) message is useless after its lease has run out, but the broker must
    # not redeliver a running refresh: keep visibility well past the longest refresh.
    visibility = int(max(60, 3 * (settings.origin_timeout_seconds + settings.lease_ttl_seconds)))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_queues=[Queue(QUEUE, routing_key=QUEUE, queue_arguments={"x-max-priority": 10})],
        task_default_priority=None,
        broker_transport_options={
            "priority_steps": [0, 3, 6, 9],
            "sep": ":",
            "queue_order_strategy": "priority",
            "visibility_timeout": visibility,
            "socket_timeout": 2,
            "socket_connect_timeout": 1,
            "max_retries": 2,
        },
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # A web request must never hang on a dead broker: fail the publish fast instead.
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        task_send_sent_event=True,
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_heartbeat=10,
    )
    return app


app = make_celery(get_settings())
