"""Tags and POST /v1/purge on a real stack (gunicorn with two workers, each with its near-cache):
tags from the origin's header and the namespace, hard and soft tag purges racing a slow refresh
of a stored key and of a key being filled for the first time, namespace purges, bad bodies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from tests.faults.observe import worker_metric
from tests.stack import Stack, wait_until

ADMIN = "group-purge-admin-5d1c0f7e9a2b4c6d8e"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
STACK_NAMESPACES = """
[namespaces.shop]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
tags = ["catalog", "product:{key}"]

[namespaces.other]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""
STACK_ENV = {"ADMIN_TOKEN": ADMIN, "WEB_CONCURRENCY": "2", "ORIGIN_LATENCY_MS": "50"}
SLOW_MS = 2500
FRESH = {"HIT", "MISS", "EARLY"}


@pytest.fixture(scope="module", autouse=True)
def _tagging_origin(stack: Stack) -> None:
    stack.origin_config(surrogate_key="item-{key} all-items")


def purge(stack: Stack, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(stack.web_url + "/v1/purge", json=body, headers=AUTH, timeout=30, **kwargs)


def count(r: requests.Response) -> int:
    return int(r.json()["count"])


def warm_every_process(stack: Stack, ns: str, key: str) -> None:
    """Read the key over many fresh connections, so that both gunicorn workers hold it in memory."""
    for _ in range(30):
        r = stack.get(ns, key)
        assert r.status_code == 200


@contextmanager
def watching(stack: Stack, ns: str, key: str) -> Iterator[list[tuple[int, str]]]:
    """Read the key continuously (fresh connections: any web process) while the block runs:
    every (count, X-Cache) answered."""
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            r = stack.get(ns, key)
            if r.status_code == 200:
                seen.append((count(r), r.headers["X-Cache"]))

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        yield seen
    finally:
        stop.set()
        for t in threads:
            t.join()


def slow_refresh_under_way(stack: Stack, key: str) -> None:
    """Start a manual refresh of the key whose origin call takes SLOW_MS; return once the call began."""
    before = stack.origin_stats()["per_key"].get(key, 0)
    stack.origin_config(latency_ms=SLOW_MS)
    r = requests.post(stack.url("shop", key) + "/refresh", headers=AUTH, timeout=5)
    assert r.status_code == 202 and r.json()["enqueued"] is True, r.text
    wait_until(lambda: stack.origin_stats()["per_key"].get(key, 0) > before, 10, "the slow origin call")
    stack.origin_config(latency_ms=50)  # calls from now on are quick


def refused_writes(stack: Stack) -> float:
    return worker_metric(stack, "herdless_refresh_total", outcome="lost_lease") + worker_metric(
        stack, "herdless_refresh_total", outcome="fenced"
    )


def test_tags_come_from_the_origin_header_and_the_namespace(stack: Stack) -> None:
    for ns, key in (("shop", "t1"), ("shop", "t2"), ("other", "t1")):  # one origin: its count is per key
        assert stack.get(ns, key).headers["X-Cache"] == "MISS"
    # From the origin's Surrogate-Key: item-t1 is carried by shop/t1 and other/t1.
    r = purge(stack, {"tags": ["item-t1"]})
    assert r.status_code == 200, r.text
    assert r.json()["purged"] == 2 and r.json()["keys"]["hard"] == 2 and r.json()["soft"] is False
    assert stack.get("shop", "t1").headers["X-Cache"] == "MISS"
    assert stack.get("other", "t1").headers["X-Cache"] == "MISS"
    assert stack.get("shop", "t2").headers["X-Cache"] == "HIT"
    # From the namespace's rule: product:{key}, and catalog on every value of shop only.
    assert purge(stack, {"tags": ["product:t2"]}).json()["purged"] == 1
    assert stack.get("shop", "t2").headers["X-Cache"] == "MISS"
    stack.get("shop", "t3")
    report = purge(stack, {"tags": ["catalog", "nothing-carries-this"]}).json()
    assert report["purged"] == 3  # shop/t1, t2, t3; other/t1 does not carry catalog
    assert stack.get("other", "t1").headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("soft", [False, True])
def test_a_tag_purge_racing_a_slow_refresh_never_lets_the_pre_purge_value_be_served_fresh(
    stack: Stack, soft: bool
) -> None:
    key = f"race-{'soft' if soft else 'hard'}"
    first = count(stack.get("shop", key))
    warm_every_process(stack, "shop", key)
    slow_refresh_under_way(stack, key)  # it will answer count first + 1, fetched before the purge
    refused = refused_writes(stack)
    r = purge(stack, {"tags": [f"item-{key}"], "soft": soft})
    assert r.status_code == 200, r.text
    assert r.json()["keys"]["soft" if soft else "hard"] == 1
    assert r.json()["web_processes"]["confirmed"] == r.json()["web_processes"]["told"] >= 2
    with watching(stack, "shop", key) as seen:
        wait_until(lambda: refused_writes(stack) > refused, 15, "the slow refresh's write to be refused")
        wait_until(lambda: any(c > first + 1 for c, _ in seen), 10, "a value fetched after the purge")
    assert seen
    assert all(c != first + 1 for c, _ in seen), "the value fetched before the purge was served"
    assert not [(c, x) for c, x in seen if c == first and x in FRESH], "the purged value was served fresh"
    if soft:
        assert (first, "STALE") in seen or seen[0][0] > first + 1


@pytest.mark.parametrize("soft", [False, True])
def test_a_tag_purge_racing_a_first_fill_refuses_its_value_whose_tags_came_with_it(stack: Stack, soft: bool) -> None:
    """The key has never been stored: its tags are known only once the slow origin answers, after
    the purge answered. The writer then finds the purge's moment and may not write."""
    key = f"fill-{'soft' if soft else 'hard'}"
    stack.origin_config(latency_ms=SLOW_MS)
    answers: list[requests.Response] = []
    reader = threading.Thread(target=lambda: answers.append(stack.get("shop", key, timeout=30)))
    reader.start()
    try:
        wait_until(lambda: stack.origin_stats()["per_key"].get(key, 0) == 1, 10, "the first fill's origin call")
        stack.origin_config(latency_ms=50)
        refused = refused_writes(stack)
        r = purge(stack, {"tags": [f"item-{key}"], "soft": soft})
        assert r.status_code == 200 and r.json()["purged"] == 0, r.text
        wait_until(lambda: refused_writes(stack) > refused, 15, "the first fill's write to be refused")
    finally:
        reader.join()
    # The reader that waited through the purge got a value fetched after it.
    assert answers[0].status_code == 200 and count(answers[0]) == 2, answers[0].text
    with watching(stack, "shop", key) as seen:
        wait_until(lambda: len(seen) >= 20, 10, "reads after the purge")
    assert {c for c, _ in seen} == {2}


def test_a_namespace_purge_purges_every_value_of_the_namespace(stack: Stack) -> None:
    keys = [f"ns-{i}" for i in range(40)]
    for key in keys:
        stack.get("other", key)
    before = {key: count(stack.get("other", key)) for key in keys}
    r = purge(stack, {"namespace": "other", "soft": True})
    assert r.status_code == 200, r.text
    assert r.json()["namespace"] == "other" and r.json()["keys"]["soft"] >= 40
    assert r.json()["web_processes"]["confirmed"] == r.json()["web_processes"]["told"] >= 2
    assert {stack.get("other", key).headers["X-Cache"] for key in keys[:10]} == {"STALE"}
    wait_until(
        lambda: all(count(stack.get("other", key)) == before[key] + 1 for key in keys[:10]), 10, "one refresh each"
    )
    r = purge(stack, {"namespace": "other"})
    assert r.json()["keys"]["hard"] >= 40
    assert stack.get("other", keys[0]).headers["X-Cache"] == "MISS"
    assert stack.get("shop", "t2").status_code == 200


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "invalid_body"),
        (b"[]", "invalid_body"),
        (b"{}", "invalid_body"),
        (b'{"tags": ["a"], "namespace": "shop"}', "invalid_body"),
        (b'{"tags": []}', "invalid_tag"),
        (b'{"tags": [""]}', "invalid_tag"),
        (b'{"tags": ["ok", 7]}', "invalid_tag"),
        (b'{"tags": "catalog"}', "invalid_tag"),
        (b'{"tags": ["' + b"x" * 1025 + b'"]}', "invalid_tag"),
        (b'{"tags": ["a\\u0000b"]}', "invalid_tag"),
        (b'{"namespace": "nope"}', "unknown_namespace"),
        (b'{"namespace": "../x"}', "unknown_namespace"),
        (b'{"namespace": 3}', "unknown_namespace"),
        (b'{"tags": ["catalog"], "soft": "yes"}', "invalid_body"),
        (b'{"tags": ["catalog"], "hard": true}', "invalid_body"),
    ],
)
def test_a_bad_body_is_a_400_and_purges_nothing(stack: Stack, body: bytes, error: str) -> None:
    stack.get("shop", "keep")
    r = requests.post(stack.web_url + "/v1/purge", data=body, headers=AUTH, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == error and r.json()["detail"]
    assert stack.get("shop", "keep").headers["X-Cache"] == "HIT"


def test_the_admin_token_is_checked_before_the_body(stack: Stack) -> None:
    url = stack.web_url + "/v1/purge"
    assert requests.post(url, data=b"not json", timeout=10).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert requests.post(url, json={"tags": ["catalog"]}, headers=bad, timeout=10).status_code == 403
    stack.get("shop", "keep2")
    assert stack.get("shop", "keep2").headers["X-Cache"] == "HIT"
