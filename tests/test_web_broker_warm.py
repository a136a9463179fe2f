"""A web process connects to the broker at start, so its first cold miss does not pay for it."""

from __future__ import annotations

import time

from shared.settings import Settings
from shared.tasks import RefreshRequest, send_refresh
from tests.stack import RedisServer, free_port
from web.app import celery_client, create_app, warm_broker_connection


def test_the_web_tier_declares_the_refresh_queue_at_start_before_any_request(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.flushall()
    settings = Settings(redis_url=redis_server.url, celery_broker_url=redis_server.url, near_cache=False)
    app = create_app(settings)
    # No worker runs and nothing was sent: only the start-up warm-up can have declared it.
    assert client.exists("_kombu.binding.herdless") == 1
    assert client.llen("herdless") == 0
    celery = app.extensions["herdless"].celery
    # The first send reuses the warmed connection: it declares nothing more.
    declared_before = client.info("commandstats").get("cmdstat_sadd", {}).get("calls", 0)
    send_refresh(celery, RefreshRequest("demo", "k", "token", "miss", 0), settings)
    assert client.info("commandstats").get("cmdstat_sadd", {}).get("calls", 0) == declared_before
    assert client.llen("herdless") == 1


def test_a_broker_that_is_down_at_start_does_not_stop_the_web_tier(redis_server: RedisServer) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(redis_url=redis_server.url, celery_broker_url=dead)
    started = time.monotonic()
    assert warm_broker_connection(celery_client(settings, None)) is False
    assert time.monotonic() - started < 5  # the broker's connect timeout (2 s), not a hang
