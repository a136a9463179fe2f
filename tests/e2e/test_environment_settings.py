"""Settings taken from the environment by a running stack: the gthread web worker class and
XFETCH_BETA=0 (no early refresh; values are refreshed when they expire)."""

from __future__ import annotations

import collections
import json
import time

import requests

from tests.faults.observe import web_metric
from tests.stack import Stack, cold_herd

NAMESPACES = """
# No xfetch_beta here: both namespaces take XFETCH_BETA from the environment.
[namespaces.hot]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 1

[namespaces.herd]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""


STACK_NAMESPACES = NAMESPACES
STACK_ENV = {
    "WEB_WORKER_CLASS": "gthread",
    "WEB_THREADS": "8",
    "XFETCH_BETA": "0",
}


def test_the_gthread_web_worker_class_serves_a_cold_herd_with_one_origin_call(stack: Stack) -> None:
    assert "Using worker: gthread" in stack.procs["web"].output()
    key = "gthread-herd"
    results = cold_herd(stack, "herd", [key], 40)
    assert {status for _, status, _ in results} == {200}, results[:3]
    assert len({body for _, _, body in results}) == 1
    assert stack.origin_stats()["per_key"][key] == 1
    hit = stack.get("herd", key)
    assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT"
    assert json.loads(hit.content) == json.loads(results[0][2])


def test_xfetch_beta_0_from_the_environment_refreshes_only_when_values_expire(stack: Stack) -> None:
    key = "never-early"
    session = requests.Session()
    assert session.get(stack.url("hot", key), timeout=10).headers["X-Cache"] == "MISS"
    outcomes: collections.Counter[str] = collections.Counter()
    start = time.monotonic()
    # Four TTL windows: with the default beta (4) a 100 ms refresh would start ~0.4 s early in
    # most of them.
    while time.monotonic() - start < 4:
        r = session.get(stack.url("hot", key), timeout=10)
        assert r.status_code == 200
        outcomes[r.headers["X-Cache"]] += 1
        time.sleep(0.01)
    session.close()
    assert outcomes["EARLY"] == 0, outcomes
    assert outcomes["STALE"] >= 2, outcomes  # the refreshes came from expiry
    assert web_metric(stack, "herdless_refresh_enqueued_total", namespace="hot", reason="early") == 0
    assert web_metric(stack, "herdless_refresh_enqueued_total", namespace="hot", reason="stale") >= 2
    assert stack.origin_stats()["per_key"][key] >= 3
