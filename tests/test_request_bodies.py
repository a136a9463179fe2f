"""The JSON bodies the web tier reads (a batch read's, a warm-up's, a proxied URLs' warm-up's, a
group purge's): a body that is JSON in name only -- here nested deeper than Python's parser
recurses -- is the route's 400 invalid_body, never a 500, and nothing is read, enqueued or
purged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from shared.settings import Settings
from tests.stack import RedisServer
from web.app import create_app

TOKEN = "b" * 40
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
# Deeper than the interpreter's recursion limit (json raises RecursionError, not ValueError),
# well under every route's body limit.
DEEP = b'{"keys": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"


@pytest.fixture
def app(redis_server: RedisServer) -> Iterator[Flask]:
    redis_server.client().flushall()
    settings = Settings(redis_url=redis_server.url, celery_broker_url=redis_server.url, admin_token=TOKEN)
    app = create_app(settings)
    app.extensions["herdless"].waiter.stop()
    yield app


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/v1/cache/demo/batch", {}, DEEP),  # public
        ("/v1/cache/demo/warm", ADMIN, DEEP),
        ("/v1/purge", ADMIN, b'{"tags": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
        ("/v1/proxy/demo-proxy/warm", ADMIN, b'{"targets": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
    ],
)
def test_a_body_nested_past_the_parser_is_a_400_not_a_500(
    app: Flask, path: str, headers: dict[str, str], body: bytes
) -> None:
    r = app.test_client().post(path, data=body, headers={"Content-Type": "application/json", **headers})
    assert r.status_code == 400, r.get_data(as_text=True)[:300]
    assert r.get_json()["error"] == "invalid_body"
    # Nothing read, enqueued or marked: Redis holds only the broker's bindings of the start-up
    # and, once its recorder flushed, the status page's per-second counts of the requests.
    stored = app.extensions["herdless"].store.redis.keys("*")
    assert [key for key in stored if b"_kombu.binding" not in key and b":rates:" not in key] == []
