"""The web tier's front door (web/front.py): past the process's bound on reads in flight, and while
its event loop runs late, a read is refused before Flask with the route's 503 JSON and Retry-After,
at once, while near-cache hits, health and admin routes are still answered."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from shared.answers import OVERLOADED
from shared.settings import Settings
from tests.stack import PYTHON, ROOT, RedisServer, Stack, metric, wait_until
from web.front import LAG_DETAIL, SHED_AFTER_SECONDS, LoopLag

STACK_NAMESPACES = """
[namespaces.fr]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 600
"""
# One process, two reads in flight at most, an origin slow enough that admitted reads hold their slots.
STACK_ENV = {
    "WEB_CONCURRENCY": "1",
    "MAX_REQUESTS_IN_FLIGHT": "2",
    "ORIGIN_LATENCY_MS": "2500",
    "COLD_WAIT_TIMEOUT_SECONDS": "8",
    "WORKER_CONCURRENCY": "8",
}


def web_metrics(stack: Stack) -> str:
    return requests.get(stack.web_url + "/metrics", timeout=10).text


def test_reads_past_the_bound_are_refused_at_once_with_503_json(stack: Stack) -> None:
    warm = stack.get("fr", "warm-key")
    assert warm.status_code == 200
    wait_until(lambda: stack.get("fr", "warm-key").headers.get("X-Cache") == "HIT", 20, "warm-key a HIT")
    before = web_metrics(stack)
    with ThreadPoolExecutor(max_workers=2) as pool:
        holders = [pool.submit(stack.get, "fr", f"holder-{i}") for i in range(2)]
        # Both holders won their keys' leases and wait for their refreshes: both slots are taken.
        wait_until(
            lambda: (
                metric(web_metrics(stack), "herdless_refresh_enqueued_total", namespace="fr", reason="miss")
                >= metric(before, "herdless_refresh_enqueued_total", namespace="fr", reason="miss") + 2
            ),
            20,
            "two cold reads admitted and waiting",
        )
        refused = []
        for i in range(5):
            started = time.monotonic()
            r = stack.get("fr", f"refused-{i}")
            refused.append((r, time.monotonic() - started))
        hit = stack.get("fr", "warm-key")
        health = requests.get(stack.web_url + "/healthz", timeout=10)
        served = [h.result() for h in holders]
    for r, elapsed in refused:
        assert r.status_code == 503
        assert r.json() == {"error": "overloaded", "detail": OVERLOADED.detail}
        assert r.headers["Retry-After"] == "1" and r.headers["Content-Type"] == "application/json"
        assert elapsed < 1.0  # not queued behind the 2.5 s origin
    assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT"  # near-cache hits pass the bound
    assert health.status_code == 200
    assert [s.status_code for s in served] == [200, 200]
    after = web_metrics(stack)

    def rose(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert rose("herdless_front_refused_total", reason="in_flight") == 5
    assert rose("herdless_refused_total", reason="overloaded") == 5
    assert rose("herdless_requests_total", namespace="fr", outcome="error") == 5
    assert rose("herdless_refresh_enqueued_total", namespace="fr", reason="miss") == 2  # refusals enqueue nothing
    # The slots came back: the next cold read is admitted.
    assert stack.get("fr", "after-the-holders").status_code == 200


def test_the_loop_lag_goes_up_at_once_and_down_by_halves() -> None:
    lag = LoopLag()
    lag.observe(2.0)
    assert lag.seconds == 2.0
    lag.observe(0.0)
    assert lag.seconds == 1.0
    lag.observe(-0.01)  # a timer early by a hair is not late
    assert lag.seconds == 0.5
    lag.observe(3.0)
    assert lag.seconds == 3.0


LAG_CHILD = """
from gevent import monkey; monkey.patch_all()
import time, gevent
from gevent.monkey import get_original
from web.front import LoopLag
lag = LoopLag(interval=0.02)
assert lag.start() and lag.start()
gevent.sleep(0.2)
quiet = lag.seconds
native_sleep = get_original("time", "sleep")
native_sleep(0.6)  # the loop cannot run for 0.6 s
gevent.sleep(0.005)  # one turn of the loop: the monitor notices
print(quiet, lag.seconds)
"""


def test_under_gevent_the_monitor_sees_a_blocked_loop() -> None:
    out = subprocess.run([PYTHON, "-c", LAG_CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    quiet, blocked = map(float, out.stdout.split())
    assert quiet < 0.3 and blocked >= 0.5


@pytest.fixture
def app_with_lag(redis_server: RedisServer) -> Iterator[object]:
    from web.app import create_app

    redis_server.client().flushall()
    settings = Settings(redis_url=redis_server.url, celery_broker_url=redis_server.url, admin_token="a" * 40)
    app = create_app(settings)
    app.extensions["herdless"].waiter.stop()
    yield app


def test_while_the_loop_runs_late_reads_are_refused_and_other_routes_answered(app_with_lag: object) -> None:
    from flask import Flask

    assert isinstance(app_with_lag, Flask)
    client = app_with_lag.test_client()
    front = app_with_lag.wsgi_app
    front.lag.seconds = SHED_AFTER_SECONDS * 2  # type: ignore[attr-defined]
    r = client.get("/v1/cache/demo/some-key")
    assert r.status_code == 503 and r.get_json() == {"error": "overloaded", "detail": LAG_DETAIL}
    assert r.headers["Retry-After"] == "1"
    assert client.head("/v1/cache/demo/some-key").status_code == 503
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/cache/nope/key").status_code == 404  # not a namespace: the route's 404
    assert client.get("/v1/cache/demo/a?x=1").status_code == 400  # not a read target: the route's 400
    meta = client.get("/v1/cache/demo/some-key/meta", headers={"Authorization": "Bearer " + "a" * 40})
    assert meta.status_code == 404 and meta.get_json()["error"] == "not_stored"


def test_front_module_is_importable_without_gevent() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from web.front import LoopLag; print(LoopLag().start())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "False"


def test_while_the_refresh_tier_is_behind_a_joiner_past_the_bound_is_refused(app_with_lag: object) -> None:
    from flask import Flask

    assert isinstance(app_with_lag, Flask)
    client = app_with_lag.test_client()
    front = app_with_lag.wsgi_app
    hub = app_with_lag.extensions["herdless"].waiter
    admission = front.admission  # type: ignore[attr-defined]
    with hub.join("demo", "cold-key"):  # one cold waiter of the process waits for the key
        assert not front._behind()  # type: ignore[attr-defined]  # the bound is at its ceiling
        admission.limit = 1.0  # shrunk: cold waits ran past their target
        r = client.get("/v1/cache/demo/cold-key")
        assert r.status_code == 503 and r.get_json()["error"] == "too_many_waiters"
        assert r.headers["Retry-After"] == "1"
        admission.limit = 2.0  # room for one more waiter: it would join
        assert not front._behind()  # type: ignore[attr-defined]


def test_a_key_whose_refresh_is_under_way_is_answered_stale_from_memory_before_flask(app_with_lag: object) -> None:
    from flask import Flask
    from prometheus_client import REGISTRY

    from shared.store import new_token
    from tests.readpaths import store_fresh

    assert isinstance(app_with_lag, Flask)
    state = app_with_lag.extensions["herdless"]
    state.read_path.near_cache.resume()  # as its (stopped) subscription would once live
    ns, store = state.namespaces["demo"], state.read_path.store
    store_fresh(store, ns, "pending-key", b"old")
    store.soft_purge(ns, "pending-key")
    assert store.read(ns, "pending-key", new_token()).won_lease  # another process's refresh is under way

    def front_hits() -> float:
        return REGISTRY.get_sample_value("herdless_front_hits_total", {"namespace": "demo"}) or 0.0

    client = app_with_lag.test_client()
    first = client.get("/v1/cache/demo/pending-key")  # asks Redis: STALE, its lease held
    assert first.status_code == 200 and first.headers["X-Cache"] == "STALE" and first.data == b"old"
    before = front_hits()
    again = client.get("/v1/cache/demo/pending-key")  # from the near-cache, by the front door
    assert again.status_code == 200 and again.headers["X-Cache"] == "STALE" and again.data == b"old"
    assert front_hits() == before + 1
