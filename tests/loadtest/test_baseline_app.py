"""The hitbench baseline answers the web tier's URL shape with one Redis GET."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.baseline_app import baseline_key, create_app
from tests.stack import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def test_baseline_serves_the_stored_value_and_404s_the_rest(redis_server: RedisServer) -> None:
    redis_server.client().set(baseline_key("demo", "warm"), b'{"key": "warm"}')
    client = create_app(redis_server.url).test_client()

    hit = client.get("/v1/cache/demo/warm")
    assert hit.status_code == 200
    assert hit.data == b'{"key": "warm"}'
    assert hit.headers["X-Cache"] == "HIT"

    missing = client.get("/v1/cache/demo/cold")
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "not_found"
    assert client.get("/healthz").status_code == 200
