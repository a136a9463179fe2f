"""The web tier's blocking Redis pool: a pool that is all busy is told apart from a Redis that is down."""

from __future__ import annotations

import pytest
import redis

from launcher.processes import free_port
from shared.connection import PoolExhausted, make_redis
from shared.settings import Settings
from tests.stack import RedisServer


def test_a_pool_whose_connections_all_stay_busy_raises_pool_exhausted(redis_server: RedisServer) -> None:
    client = make_redis(Settings(redis_url=redis_server.url), pool_size=1, pool_wait_seconds=0.2)
    held = client.connection_pool.get_connection()
    try:
        with pytest.raises(PoolExhausted):
            client.ping()
    finally:
        client.connection_pool.release(held)
    assert client.ping()  # given back: the next command gets the connection


def test_a_redis_that_refuses_connections_is_a_plain_connection_error() -> None:
    client = make_redis(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"), pool_size=4, pool_wait_seconds=0.2)
    with pytest.raises(redis.ConnectionError) as caught:
        client.ping()
    assert not isinstance(caught.value, PoolExhausted)
