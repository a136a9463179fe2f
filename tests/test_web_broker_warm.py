"""A web process connects to the broker at start, so its first cold miss does not pay for it."""

from __future__ import annotations

import json
import subprocess
import time

from shared.settings import Settings
from tests.stack import PYTHON, ROOT, RedisServer, free_port
from web.app import celery_client, warm_broker_connection

# In a process of its own: kombu remembers declared bindings process-wide, so a queue another
# test of this process declared would never be declared again here.
_START_THEN_SEND = """
import json, sys, redis
from shared.settings import Settings
from shared.keys import Keyspace
from shared.tasks import RefreshRequest, broker_lists, send_refresh
from web.app import create_app
url = sys.argv[1]
settings = Settings(redis_url=url, celery_broker_url=url, near_cache=False)
broker = redis.Redis.from_url(url)
app = create_app(settings)
keys = Keyspace.of(settings)
declared_at_start = broker.exists(keys.broker_keyprefix + "_kombu.binding." + keys.queue) == 1
stats = broker.info("commandstats")
sadds = stats.get("cmdstat_sadd", {}).get("calls", 0)
publishes = stats.get("cmdstat_publish", {}).get("calls", 0)
send_refresh(app.extensions["herdless"].celery, RefreshRequest("demo", "k", "token", "miss", 0), settings)
print(json.dumps({
    "declared_at_start": declared_at_start,
    "sadds_by_first_send": broker.info("commandstats").get("cmdstat_sadd", {}).get("calls", 0) - sadds,
    # No task-sent event: the message is the only thing a send puts on the broker.
    "publishes_by_first_send": broker.info("commandstats").get("cmdstat_publish", {}).get("calls", 0) - publishes,
    "queued": broker.llen(broker_lists(keys)[0]),
}))
"""


def test_the_web_tier_declares_the_refresh_queue_at_start_before_any_request(redis_server: RedisServer) -> None:
    redis_server.client().flushall()
    done = subprocess.run(
        [PYTHON, "-c", _START_THEN_SEND, redis_server.url], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # No worker runs and nothing was sent yet: only the start-up warm-up can have declared it;
    # the first send then reuses the warmed connection and declares nothing more.
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "declared_at_start": True,
        "sadds_by_first_send": 0,
        "publishes_by_first_send": 0,
        "queued": 1,
    }


def test_a_broker_that_is_down_at_start_does_not_stop_the_web_tier(redis_server: RedisServer) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(redis_url=redis_server.url, celery_broker_url=dead)
    started = time.monotonic()
    assert warm_broker_connection(celery_client(settings, None)) is False
    assert time.monotonic() - started < 5  # the broker's connect timeout (2 s), not a hang
