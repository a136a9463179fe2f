"""Batch reads end to end (real redis-server, demo origin, gunicorn, Celery): cold keys are enqueued
once each and answered together, warm ones from memory, each key's answer is its own, and a bad
body reads and enqueues nothing. Public: no admin token."""

from __future__ import annotations

import json
from typing import Any

import requests

from shared.keys import EntryKeys
from tests.faults.observe import web_metric
from tests.stack import Stack

STACK_NAMESPACES = """
[namespaces.b]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 300
"""
STACK_ENV = {
    "ORIGIN_LATENCY_MS": "20",
    "BATCH_MAX_KEYS": "150",
    "ADMIN_TOKEN": "batch-admin-t0ken-8c0e5b0f-0123456789abcdef",
}


def batch(stack: Stack, body: Any, raw: bytes | None = None, namespace: str = "b") -> requests.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(
        f"{stack.web_url}/v1/cache/{namespace}/batch",
        data=data,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def enqueued(stack: Stack) -> float:
    return web_metric(stack, "herdless_refresh_enqueued_total", namespace="b", reason="miss")


def test_a_batch_of_cold_keys_enqueues_each_once_and_answers_them_together(stack: Stack) -> None:
    keys = [f"cold-{i}" for i in range(100)]
    before = enqueued(stack)
    r = batch(stack, {"keys": keys + keys[:5]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == keys  # one entry per distinct key, in order
    for key in keys:
        entry = body[key]
        assert entry["status"] == 200 and entry["x_cache"] == "MISS", entry
        assert entry["body_encoding"] == "text" and json.loads(entry["body"])["key"] == key
        assert entry["content_type"].startswith("application/json") and entry["etag"]
    assert enqueued(stack) - before == 100
    calls = {k: n for k, n in stack.origin_stats()["per_key"].items() if k.startswith("cold-")}
    assert calls == {key: 1 for key in keys}
    # Now warm: the same batch is all HITs, with ages, and calls the origin no more.
    again = batch(stack, {"keys": keys}).json()
    assert {entry["x_cache"] for entry in again.values()} == {"HIT"}
    assert all(entry["age"] is not None and entry["age"] >= 0 for entry in again.values())
    assert sum(n for k, n in stack.origin_stats()["per_key"].items() if k.startswith("cold-")) == 100


def test_each_key_of_a_batch_answers_for_itself(stack: Stack) -> None:
    body = batch(stack, {"keys": ["missing-1", "plain", "a/b?c"]}).json()
    assert body["missing-1"]["status"] == 404 and body["missing-1"]["error"] == "not_found"
    assert body["plain"]["status"] == 200
    assert body["a/b?c"]["status"] == 200 and json.loads(body["a/b?c"]["body"])["key"] == "a/b?c"


def test_a_bad_batch_body_is_a_400_that_reads_and_enqueues_nothing(stack: Stack) -> None:
    before = enqueued(stack)
    client = stack.redis.client()
    for body, raw, error in [
        ({"keys": ["ok-1", "bad\x00key"]}, None, "invalid_key"),
        ({"keys": ["ok-2", 5]}, None, "invalid_key"),
        ({"keys": ["ok-3"] + [f"n{i}" for i in range(150)]}, None, "too_many_keys"),
        ({"keys": "ok-4"}, None, "invalid_body"),
        ({"keys": ["ok-5"], "other": 1}, None, "invalid_body"),
        (None, b"{not json", "invalid_body"),
    ]:
        r = batch(stack, body, raw)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"] == error
    assert enqueued(stack) == before
    for key in ("ok-1", "ok-2", "ok-3", "ok-4", "ok-5"):
        k = EntryKeys.of("b", key)
        assert not client.exists(k.entry, k.lease, k.queued), key


def test_a_batch_of_an_unknown_namespace_is_a_404(stack: Stack) -> None:
    r = batch(stack, {"keys": ["k"]}, namespace="nope")
    assert r.status_code == 404 and r.json()["error"] == "unknown_namespace"
