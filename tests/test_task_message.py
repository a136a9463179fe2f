"""The web tier's own refresh message (shared/taskmessage.py) is the one Celery's send_task puts
on a Redis broker, but for its ids and moments: same list, envelope, headers, body."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from celery import Celery

from shared.settings import Settings
from shared.taskmessage import RedisRefreshPublisher, direct_publish_possible, priority_list
from shared.tasks import RefreshRequest, broker_lists, celery_config, send_refresh
from tests.stack import RedisServer

# What differs by nature between two messages: ids, moments, the sender's name.
_PER_MESSAGE_HEADERS = ("id", "root_id", "expires", "origin")
_PER_MESSAGE_PROPERTIES = ("correlation_id", "reply_to", "delivery_tag")


def _pushed(client: Any, lists: list[str]) -> tuple[str, dict[str, Any]]:
    found = [(name, client.lrange(name, 0, -1)) for name in lists]
    nonempty = [(name, items) for name, items in found if items]
    assert len(nonempty) == 1 and len(nonempty[0][1]) == 1, found
    name, items = nonempty[0]
    return name, json.loads(items[0])


def _comparable(envelope: dict[str, Any]) -> dict[str, Any]:
    headers = {k: v for k, v in envelope["headers"].items() if k not in _PER_MESSAGE_HEADERS}
    properties = {k: v for k, v in envelope["properties"].items() if k not in _PER_MESSAGE_PROPERTIES}
    body = json.loads(base64.b64decode(envelope["body"]))
    rest = {k: v for k, v in envelope.items() if k not in ("headers", "properties", "body")}
    return {"headers": headers, "properties": properties, "body": body, **rest}


@pytest.mark.parametrize("reason", ["miss", "stale", "early", "warm"])
def test_the_direct_message_is_celerys_message(redis_server: RedisServer, reason: str) -> None:
    client = redis_server.client()
    client.flushall()
    settings = Settings(redis_url=redis_server.url, celery_broker_url=redis_server.url)
    assert direct_publish_possible(settings)
    request = RefreshRequest("demo", "k/ü 1", "a" * 24, reason, 1_796_000_000_123)
    lists = broker_lists(RedisRefreshPublisher(settings, client).messages.keys)

    celery = Celery("herdless")
    celery.conf.update(celery_config(settings))
    send_refresh(celery, request, settings)
    celery_list, celery_message = _pushed(client, lists)
    client.flushall()

    RedisRefreshPublisher(settings, client).send(request)
    own_list, own_message = _pushed(client, lists)

    assert own_list == celery_list
    assert _comparable(own_message) == _comparable(celery_message)
    assert own_message["headers"]["id"] == own_message["properties"]["correlation_id"]
    assert own_message["headers"]["expires"][:16] == celery_message["headers"]["expires"][:16]


def test_every_priority_has_its_own_list() -> None:
    settings = Settings()
    names = [priority_list(RedisRefreshPublisher(settings, None).messages.keys, p) for p in (0, 3, 6, 9)]
    assert names == broker_lists(RedisRefreshPublisher(settings, None).messages.keys)


def test_other_brokers_keep_celerys_send() -> None:
    assert not direct_publish_possible(Settings(celery_broker_url="amqp://guest@127.0.0.1:5672//"))
    with pytest.raises(ValueError):
        RedisRefreshPublisher(Settings(celery_broker_url="amqp://guest@127.0.0.1:5672//"), None)
