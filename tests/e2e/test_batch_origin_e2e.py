"""Batch origins end to end (real redis-server, demo origin, gunicorn, Celery): the refreshes of one
namespace that are due together cost one origin call per batch_max_keys keys, each key still
written alone (a left-out key is its 404), and concurrent single misses coalesce too."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests

from shared.keys import EntryKeys
from tests.stack import Stack, metric, wait_until

STACK_NAMESPACES = """
[namespaces.items]
origin = "${ORIGIN_BASE_URL}/items/{key}"
batch_origin = "${ORIGIN_BASE_URL}/items?ids={keys}"
batch_max_keys = 100
cache_ttl_seconds = 300

[namespaces.single]
origin = "${ORIGIN_BASE_URL}/items/{key}"
batch_origin = "${ORIGIN_BASE_URL}/items?ids={keys}"
batch_max_keys = 1
cache_ttl_seconds = 300

# Single reads arrive one by one: a longer quiet window lets those of one moment share a call.
[namespaces.herd]
origin = "${ORIGIN_BASE_URL}/items/{key}"
batch_origin = "${ORIGIN_BASE_URL}/items?ids={keys}"
batch_window_ms = 200
cache_ttl_seconds = 300
"""
ADMIN = "batch-origin-admin-4d7f0c2a9b1e8d3c6a5f"
STACK_ENV = {"ORIGIN_LATENCY_MS": "50", "COLD_WAIT_TIMEOUT_SECONDS": "20", "ADMIN_TOKEN": ADMIN}


def batch(stack: Stack, namespace: str, keys: list[str]) -> dict[str, dict[str, object]]:
    r = requests.post(f"{stack.web_url}/v1/cache/{namespace}/batch", json={"keys": keys}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def fill(stack: Stack, namespace: str, keys: list[str]) -> dict[str, dict[str, object]]:
    """Batch reads of 100 keys each, all at once: a cold fill."""
    chunks = [keys[i : i + 100] for i in range(0, len(keys), 100)]
    with ThreadPoolExecutor(len(chunks)) as pool:
        answers: dict[str, dict[str, object]] = {}
        for part in pool.map(lambda chunk: batch(stack, namespace, chunk), chunks):
            answers.update(part)
    return answers


def test_a_cold_fill_costs_one_origin_call_per_hundred_keys_each_key_written_alone(stack: Stack) -> None:
    requests.post(stack.origin_url + "/stats/reset", timeout=5)
    keys = [f"fill-{i}" for i in range(300)] + ["missing-7"]
    answers = fill(stack, "items", keys)
    assert {key: a["status"] for key, a in answers.items() if a["status"] != 200} == {"missing-7": 404}
    for key in keys[:-1]:
        assert json.loads(str(answers[key]["body"]))["key"] == key
    stats = stack.origin_stats()
    assert stats["batch_calls"] <= 6, stats["batch_sizes"]  # 301 keys: 4 calls when every batch is full
    assert {k: n for k, n in stats["per_key"].items() if k in keys} == {key: 1 for key in keys}
    # Each key went through its own lease: none is left held or queued once the messages are acknowledged.
    client = stack.redis.client()

    def settled() -> bool:
        return not any(client.exists(EntryKeys.of("items", k).lease, EntryKeys.of("items", k).queued) for k in keys)

    wait_until(settled, 20, "every key's lease and marker to go")
    worker = requests.get(stack.worker_metrics_url, timeout=5).text
    assert metric(worker, "herdless_origin_batch_keys_count", namespace="items") == stats["batch_calls"]
    assert metric(worker, "herdless_origin_batch_keys_sum", namespace="items") == len(keys)


def test_with_batch_max_keys_1_every_key_costs_a_call(stack: Stack) -> None:
    requests.post(stack.origin_url + "/stats/reset", timeout=5)
    keys = [f"one-{i}" for i in range(40)]
    answers = fill(stack, "single", keys)
    assert {a["status"] for a in answers.values()} == {200}
    stats = stack.origin_stats()
    assert stats["batch_calls"] == 40 and set(stats["batch_sizes"]) == {1}


def test_concurrent_single_misses_of_one_namespace_share_calls(stack: Stack) -> None:
    requests.post(stack.origin_url + "/stats/reset", timeout=5)
    keys = [f"herd-{i}" for i in range(40)]
    with ThreadPoolExecutor(len(keys)) as pool:
        statuses = list(pool.map(lambda key: stack.get("herd", key, timeout=30).status_code, keys))
    assert set(statuses) == {200}
    stats = stack.origin_stats()
    assert sum(stats["batch_sizes"]) == 40
    assert stats["batch_calls"] <= 20, stats["batch_sizes"]  # one call per key without coalescing


def test_the_namespaces_listing_names_the_batch_origin_by_host_only(stack: Stack) -> None:
    r = requests.get(f"{stack.web_url}/v1/namespaces", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    listed = {ns["name"]: ns["batch_origin"] for ns in r.json()["namespaces"]}
    host = stack.origin_url.removeprefix("http://")
    assert listed["items"] == {"host": host, "max_keys": 100, "window_ms": 20.0}
    assert listed["single"]["max_keys"] == 1
