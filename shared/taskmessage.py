"""The refresh task's message, built and pushed onto a Redis broker without Celery's send path.

Celery's `send_task` was a third of the web tier's CPU per cold key (py-spy: resolving the result
backend per greenlet, building the message through three layers, a repr of the arguments, a
declare check, kombu's retry wrapper, and a new redis-py client per publish in kombu's Redis
channel). What reaches the broker is one LPUSH of one JSON document, so on a Redis broker the
web tier builds that document itself and pushes it over a pooled connection:

- the task message is Celery's protocol 2 (docs.celeryq.dev, "Message Protocol"): headers naming
  the task, its id and expiry, the body `[args, kwargs, embed]` in JSON (never pickle);
- kombu's Redis transport wraps it in an envelope (`body` base64, `content-type`, `headers`,
  `properties` with the delivery tag, priority and routing key) and pushes it onto the queue's
  list for its priority step (`shared.tasks.broker_lists`), under the broker's key prefix.

The worker cannot tell these messages from send_task's: it is the same bytes but for ids.
`tests/test_task_message.py` holds the two side by side. A broker that is not a plain Redis URL
(AMQP, Sentinel) keeps Celery's send_task (`shared.tasks.send_refresh`).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.connection import make_redis
from shared.keys import Keyspace
from shared.settings import Settings
from shared.tasks import (
    BROKER_SEP,
    PRIORITY_STEPS,
    REFRESH_TASK,
    RefreshRequest,
    refresh_expiry_seconds,
    refresh_priority,
)

# Celery's "embed" part of the body: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def direct_publish_possible(settings: Settings) -> bool:
    """Is the broker a plain Redis (redis:// or rediss://) this process may push to itself?"""
    return settings.celery_broker_url.startswith(("redis://", "rediss://"))


def priority_list(keys: Keyspace, priority: int) -> str:
    """The broker list of a priority (kombu's `_q_for_pri` under its global key prefix)."""
    step = min(PRIORITY_STEPS, key=lambda s: abs(s - priority))
    return keys.broker_keyprefix + keys.queue + (f"{BROKER_SEP}{step}" if step else "")


class RefreshMessages:
    """Builds refresh task messages as Celery and kombu's Redis transport would send them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keyspace.of(settings)
        self.expiry_s = refresh_expiry_seconds(settings)
        self.origin = f"gen{os.getpid()}@{socket.gethostname()}"  # Celery's anon_nodename()
        self.reply_to = str(uuid.uuid4())

    def build(self, request: RefreshRequest, shadow: str | None = None) -> tuple[str, str]:
        """(list key, envelope) for one refresh; `shadow`: the name Flower shows, as send_task's."""
        task_id = str(uuid.uuid4())
        kwargs = request.as_kwargs()
        argsrepr, kwargsrepr = request.shown()  # what Flower shows (shared/tasks.py)
        priority = refresh_priority(request.reason, self.settings)
        expires = datetime.now(UTC) + timedelta(seconds=self.expiry_s)
        headers: dict[str, Any] = {
            "lang": "py",
            "task": REFRESH_TASK,
            "id": task_id,
            "shadow": shadow,
            "eta": None,
            "expires": expires.isoformat(),
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": argsrepr,
            "kwargsrepr": kwargsrepr,
            "origin": self.origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        body = json.dumps([[], kwargs, _EMBED]).encode()
        envelope = {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": self.reply_to,
                "delivery_mode": 2,
                "expiration": str(int(self.expiry_s * 1000)),
                "delivery_info": {"exchange": "", "routing_key": self.keys.queue},
                "priority": priority,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
                # send_task copies these two options into the properties as well.
                "argsrepr": argsrepr,
                "kwargsrepr": kwargsrepr,
            },
        }
        return priority_list(self.keys, priority), json.dumps(envelope)


class RedisRefreshPublisher:
    """Pushes refresh messages onto a Redis broker: one LPUSH per refresh over a pooled client.

    cache_client: this process's cache client, used when the broker is the cache's Redis (the
    usual deployment); otherwise a bounded pool of the broker's own is opened."""

    def __init__(self, settings: Settings, cache_client: Any, *, pool_size: int = 64) -> None:
        if not direct_publish_possible(settings):
            raise ValueError("direct publishing needs a redis:// or rediss:// broker")
        self.messages = RefreshMessages(settings)
        same = settings.celery_broker_url == settings.redis_url and not settings.redis_cluster
        if same and not settings.redis_sentinels:
            self.client = cache_client
        else:
            plain = settings.model_copy(update={"redis_cluster": False, "redis_sentinels": ""})
            self.client = make_redis(plain, url=settings.celery_broker_url, pool_size=pool_size, pool_wait_seconds=1.0)

    def send(self, request: RefreshRequest, shadow: str | None = None) -> None:
        """Put one refresh on the queue. Raises redis' errors when the broker is unreachable."""
        key, envelope = self.messages.build(request, shadow)
        self.client.lpush(key, envelope)
