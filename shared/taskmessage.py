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
import re
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from shared.connection import make_redis
from shared.keys import Keyspace
from shared.settings import Settings
from shared.tasks import (
    BROKER_SEP,
    PRIORITY_STEPS,
    REFRESH_MANY_TASK,
    REFRESH_TASK,
    RefreshRequest,
    refresh_expiry_seconds,
    refresh_priority,
)

# Celery's "embed" part of the body: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# Where ManyMessage's parts are cut: strings no JSON of ours holds otherwise.
_HOLE = "\x00hole\x00"
_HOLE_JSON = json.dumps(_HOLE)
_SHOWN_HOLE = "\x00shown\x00"
_SHOWN_HOLE_JSON = json.dumps(_SHOWN_HOLE)
HOLE_BODY, HOLE_SHOWN = "b", "s"
_HOLES = re.compile(f"({re.escape(_HOLE_JSON)}|{re.escape(_SHOWN_HOLE_JSON)})")


class ManyMessage(NamedTuple):
    """A REFRESH_MANY_TASK message in parts, for a script to complete with the keys it admits
    (shared/admitbatch.py). The body is ``body_head + "[" + items joined by "," + "]" +
    body_tail``; the envelope is ``segments`` with each hole between two of them filled, as a
    JSON string, with the body (``HOLE_BODY``) or with what Flower shows as the task's args
    (``HOLE_SHOWN``: ``shown_head`` and the admitted keys as a JSON list, `demo/["a","b"]`). The
    body travels as JSON text (no ``body_encoding``: kombu's Redis channel takes such a body as
    it is), since a Redis script cannot base64-encode it."""

    list_key: str
    body_head: str
    body_tail: str
    shown_head: str
    segments: list[str]
    holes: list[str]


def many_item(request: RefreshRequest) -> str:
    """One key's entry in a REFRESH_MANY_TASK message's `items` (shared/tasks.requests_of reads it)."""
    return json.dumps([request.key, request.token, str(request.reason), request.won_at_ms])


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
        argsrepr, kwargsrepr = request.shown()  # what Flower shows (shared/tasks.py)
        priority = refresh_priority(request.reason, self.settings)
        body = json.dumps([[], request.as_kwargs(), _EMBED]).encode()
        envelope = self._envelope(REFRESH_TASK, priority, argsrepr, kwargsrepr, shadow)
        envelope["body"] = base64.b64encode(body).decode()
        envelope["properties"]["body_encoding"] = "base64"
        return priority_list(self.keys, priority), json.dumps(envelope)

    def build_many(self, namespace: str, reason: str) -> ManyMessage:
        """A REFRESH_MANY_TASK message of keys of `namespace` refreshed for `reason`, in parts
        (ManyMessage). Flower shows it as `<namespace>/[…]` and the reason."""
        priority = refresh_priority(reason, self.settings)
        body = json.dumps([[], {"namespace": namespace, "items": _HOLE}, _EMBED])
        body_head, body_tail = body.split(_HOLE_JSON)
        envelope = self._envelope(REFRESH_MANY_TASK, priority, _SHOWN_HOLE, repr({"reason": str(reason)}))
        envelope["body"] = _HOLE
        parts = _HOLES.split(json.dumps(envelope))  # segment, hole, segment, ..., segment
        holes = [HOLE_BODY if mark == _HOLE_JSON else HOLE_SHOWN for mark in parts[1::2]]
        return ManyMessage(
            priority_list(self.keys, priority), body_head, body_tail, f"{namespace}/", parts[0::2], holes
        )

    def _envelope(
        self, task: str, priority: int, argsrepr: str, kwargsrepr: str, shadow: str | None = None
    ) -> dict[str, Any]:
        task_id = str(uuid.uuid4())
        expires = datetime.now(UTC) + timedelta(seconds=self.expiry_s)
        headers: dict[str, Any] = {
            "lang": "py",
            "task": task,
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
        return {
            "body": None,
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
                "delivery_tag": str(uuid.uuid4()),
                # send_task copies these two options into the properties as well.
                "argsrepr": argsrepr,
                "kwargsrepr": kwargsrepr,
            },
        }


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
