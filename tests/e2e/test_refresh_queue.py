"""The refresh queue under a backlog: priorities (MISS before EARLY) and one queued refresh per key.

The stack's one worker runs one refresh at a time; a test fills the queue by holding that one
refresh at a gated origin, so what waits in the queue, and in which order it runs, is decided
by the test rather than by timing. The worker is prefork: with one slot, the gevent pool's
consumer loop picks the next message up only at its next 2 s tick, which would make a backlog
of six outlive its lease (`expires`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import requests

from shared.keys import EntryKeys
from tests.faults.fixture_origin import FixtureOrigin
from tests.faults.observe import queued_refreshes, web_metric
from tests.stack import UNACKED, Stack, stack_for, wait_until

ADMIN = "queue-admin-token-4eb38c951d57aa1b48e906"


@dataclass
class Env:
    stack: Stack
    gated: FixtureOrigin


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("refresh-queue")
    with FixtureOrigin() as gated:
        namespaces = f"""
[namespaces.gated]
origin = "{gated.base_url}/v/{{key}}"

# Every read of a stored value in the last quarter of its TTL is EARLY: the head start
# -d*beta*ln(u) is far above its bound for any d >= 1 ms, so it is the bound, TTL / 4 (3 s).
[namespaces.early]
origin = "${{ORIGIN_BASE_URL}}/items/{{key}}"
cache_ttl_seconds = 12
xfetch_beta = 1e12

[namespaces.k]
origin = "${{ORIGIN_BASE_URL}}/items/{{key}}"
cache_ttl_seconds = 60
"""
        stack_env = {
            "WORKER_POOL": "prefork",  # see the module docstring
            "WORKER_CONCURRENCY": "1",
            "ORIGIN_LATENCY_MS": "20",
            "ADMIN_TOKEN": ADMIN,
            "COLD_WAIT_TIMEOUT_SECONDS": "20",
        }
        with stack_for(tmp, namespaces, stack_env) as stack:
            yield Env(stack, gated)


@contextmanager
def worker_busy(env: Env, name: str) -> Iterator[None]:
    """Hold the worker's only refresh slot (a cold read of a gated key) until the block ends."""
    answers: list[requests.Response] = []
    env.gated.hold()
    reader = threading.Thread(target=lambda: answers.append(env.stack.get("gated", name, timeout=30)))
    reader.start()
    try:
        wait_until(lambda: env.gated.in_flight == 1, 10, "the worker's only refresh to reach the gated origin")
        yield
    finally:
        env.gated.release()
        reader.join(30)
    assert answers and answers[0].status_code == 200, answers


def settled(stack: Stack) -> int:
    """Wait until no refresh is queued or at the origin; returns the origin's call count."""
    redis = stack.redis.client()
    wait_until(
        lambda: not queued_refreshes(redis) and stack.origin_stats()["in_flight"] == 0 and redis.hlen(UNACKED) == 0,
        15,
        "the refresh queue to drain",
    )
    return int(stack.origin_stats()["calls"])


def new_origin_paths(stack: Stack, calls_before: int) -> list[str]:
    stats = stack.origin_stats()
    return list(stats["paths"][len(stats["paths"]) - (stats["calls"] - calls_before) :])


def test_a_miss_overtakes_early_refreshes_queued_before_it(env: Env) -> None:
    stack = env.stack
    redis = stack.redis.client()
    keys = [f"early-{i}" for i in range(5)]
    for key in keys:
        assert stack.get("early", key).status_code == 200
    calls_before = settled(stack)
    early_from = max(meta(stack, "early", key)["value"]["early_refresh_from_ms"] for key in keys)
    wait_until(lambda: meta(stack, "early", keys[0])["now_ms"] >= early_from, 15, "the values' last quarter")

    cold: list[requests.Response] = []
    with worker_busy(env, "blocker-priorities"):
        for key in keys:
            r = stack.get("early", key)
            assert r.status_code == 200 and r.headers["X-Cache"] == "EARLY"
        waiter = threading.Thread(target=lambda: cold.append(stack.get("early", "overtaker", timeout=30)))
        waiter.start()
        expected = sorted([*keys, "overtaker"])
        wait_until(
            lambda: sorted(k for k, _ in queued_refreshes(redis)) == expected,
            10,
            "five early refreshes and then a miss in the queue",
        )
    waiter.join(30)
    assert cold and cold[0].status_code == 200 and cold[0].headers["X-Cache"] == "MISS"
    settled(stack)
    order = new_origin_paths(stack, calls_before)
    # Queued last, run first; then the early refreshes, in the order they were queued.
    assert order[0] == "/items/overtaker", order
    assert [p for p in order[1:] if p != "/items/overtaker"] == [f"/items/{k}" for k in keys], order


def test_a_manual_refresh_is_not_enqueued_while_one_is_queued_or_running(env: Env) -> None:
    stack = env.stack
    key = "manual"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    url = stack.url("k", key) + "/refresh"
    assert stack.get("k", key).json()["count"] == 1
    settled(stack)
    suppressed = web_metric(stack, "herdless_refresh_suppressed_total", namespace="k", reason="lease_held")
    with worker_busy(env, "blocker-manual"):
        first = requests.post(url, headers=auth, timeout=5)
        assert first.status_code == 202 and first.json() == {"enqueued": True}
        queued = requests.post(url, headers=auth, timeout=5)
        assert queued.status_code == 202, queued.text
        assert queued.json()["enqueued"] is False and queued.json()["reason"]
        assert [k for k, _ in queued_refreshes(stack.redis.client())].count(key) == 1
        # The gated key's own refresh is running (held at the origin): no second one either.
        running = requests.post(stack.url("gated", "blocker-manual") + "/refresh", headers=auth, timeout=5)
        assert running.status_code == 202 and running.json()["enqueued"] is False, running.text
        assert "blocker-manual" not in [k for k, _ in queued_refreshes(stack.redis.client())]
    assert web_metric(stack, "herdless_refresh_suppressed_total", namespace="k", reason="lease_held") == suppressed + 1
    wait_until(lambda: stack.get("k", key).json()["count"] == 2, 10, "the one manual refresh")
    settled(stack)
    assert stack.origin_stats()["per_key"][key] == 2
    assert [c.path for c in env.gated.calls].count("/v/blocker-manual") == 1


# -- GET /v1/cache/<namespace>/<key>/meta: a key's stored state, for the admin -------------------


def meta(stack: Stack, namespace: str, key: str) -> dict:
    r = requests.get(stack.url(namespace, key) + "/meta", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_meta_needs_the_admin_token_and_is_404_for_a_key_never_stored(env: Env) -> None:
    url = env.stack.url("k", "meta-never") + "/meta"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 403
    r = requests.get(url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
    assert r.status_code == 404 and r.json()["error"] == "not_stored"


def test_meta_reports_a_fresh_value_then_its_queued_refresh(env: Env) -> None:
    stack = env.stack
    read = stack.get("k", "meta-fresh")
    settled(stack)
    m = meta(stack, "k", "meta-fresh")
    value = m["value"]
    assert value["state"] == "fresh" and value["negative"] is False
    assert 50 < value["fresh_for_seconds"] <= 60 and value["fresh_until_ms"] > m["now_ms"]
    assert value["early_refresh_from_ms"] <= value["fresh_until_ms"]
    assert 0 <= value["age_seconds"] < 10 and value["refresh_duration_ms"] > 0
    assert value["size_bytes"] == len(read.content) and value["etag"] == read.headers["ETag"]
    assert m["lease"]["held"] is False and m["cooldown"]["held"] is False
    assert m["refresh"]["state"] == "none"

    auth = {"Authorization": f"Bearer {ADMIN}"}
    with worker_busy(env, "meta-blocker"):
        # The worker's only slot is taken: a manual refresh waits in the queue.
        r = requests.post(stack.url("k", "meta-fresh") + "/refresh", headers=auth, timeout=5)
        assert r.json() == {"enqueued": True}
        lease_key = EntryKeys.of("k", "meta-fresh").lease
        lease_before = stack.redis.client().get(lease_key)
        m = meta(stack, "k", "meta-fresh")
        assert m["refresh"]["state"] == "queued" and m["refresh"]["marker_until_ms"] > m["now_ms"]
        assert m["lease"]["held"] is True and m["lease"]["until_ms"] > m["now_ms"]
        assert m["value"]["state"] == "fresh"
        assert stack.redis.client().get(lease_key) == lease_before, "reading the state changed the lease"

        # The blocker's own refresh runs (held at the origin), with nothing stored yet.
        running = meta(stack, "gated", "meta-blocker")
        assert running["value"] is None
        assert running["refresh"]["state"] == "running" and running["lease"]["held"] is True
    settled(stack)
    assert meta(stack, "k", "meta-fresh")["refresh"]["state"] == "none"


def test_meta_reports_a_cooldown_after_a_failed_refresh(env: Env) -> None:
    stack = env.stack
    assert stack.get("gated", "meta-cooling").status_code == 200
    settled(stack)
    env.gated.set(mode="fail")
    try:
        r = requests.post(
            stack.url("gated", "meta-cooling") + "/refresh", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5
        )
        assert r.json() == {"enqueued": True}
        # The first failure cools the key down for 1 s: poll for it.
        m = wait_until(
            lambda: (m := meta(stack, "gated", "meta-cooling"))["cooldown"]["held"] and m,
            10,
            "the failed refresh's cooldown",
            interval=0.02,
        )
    finally:
        env.gated.set(mode="ok")
    assert m["cooldown"]["until_ms"] > m["now_ms"] and 0 < m["cooldown"]["seconds_left"] <= 1
    assert m["cooldown"]["consecutive_failures"] == 1
    assert m["cooldown"]["reason"] == "origin_error"  # the gated origin answered 500
    assert m["lease"]["held"] is False
    assert m["value"]["state"] == "fresh"  # the stored value stays
    settled(stack)
