"""Under gevent, redis-py's readiness check of a pooled connection uses the native poll
(shared/connection.py native_readiness_poll): commands still work, a connection holding an
unread reply still reads as such, and nothing changes without gevent's patch."""

from __future__ import annotations

import subprocess
import sys

from tests.stack import RedisServer

CHILD = """
from gevent import monkey; monkey.patch_all()
import sys, time, gevent, redis
from redis._parsers import hiredis
from shared.connection import native_readiness_poll
assert native_readiness_poll() is True and native_readiness_poll() is True
assert hiredis.select._native is monkey.get_original("select", "poll")
client = redis.Redis.from_url(sys.argv[1])
client.set("np", "1")
# Greenlets share the pool: each GET takes and checks a pooled connection.
jobs = [gevent.spawn(client.get, "np") for _ in range(50)]
gevent.joinall(jobs, raise_error=True)
assert all(job.value == b"1" for job in jobs)
# The check itself still tells a connection holding an unread reply from a clean one.
conn = client.connection_pool.get_connection()
assert conn.can_read() is False
conn.send_command("PING")
deadline = time.monotonic() + 10
while not conn.can_read() and time.monotonic() < deadline:
    gevent.sleep(0.01)
assert conn.can_read() is True
# A check that may wait still lets the other greenlets run: a subscriber's get_message(timeout)
# in one greenlet while another counts ticks.
sub = client.pubsub()
sub.subscribe("np-channel")
assert sub.get_message(timeout=5)["type"] == "subscribe"
ticks = []
def tick():
    while True:
        ticks.append(1)
        gevent.sleep(0.01)
ticker = gevent.spawn(tick)
gevent.sleep(0)
started = time.monotonic()
assert sub.get_message(timeout=0.5) is None
assert time.monotonic() - started >= 0.4
assert len(ticks) >= 10, len(ticks)
ticker.kill()
print("ok")
"""


def test_under_gevent_the_readiness_check_is_native_and_still_works(redis_server: RedisServer) -> None:
    out = subprocess.run([sys.executable, "-c", CHILD, redis_server.url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_without_gevent_nothing_is_patched() -> None:
    code = "from shared.connection import native_readiness_poll; import redis._parsers.hiredis as h, select; "
    code += "assert native_readiness_poll() is False and h.select is select; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
