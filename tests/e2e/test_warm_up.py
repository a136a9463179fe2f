"""Warm-ups end to end (real redis-server, demo origin, gunicorn, Celery): warmed keys are HITs for
one origin call each, warming again or during reads costs nothing extra, bad bodies enqueue
nothing, and only the admin token may warm."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from shared.keys import EntryKeys
from tests.faults.observe import web_metric
from tests.stack import BROKER_LISTS, Stack, wait_until

ADMIN = "warm-admin-t0ken-5e2413ae56c92e552e35f91"
WARM_MAX_KEYS = 2500
NAMESPACES = """
[namespaces.w]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 300
"""


STACK_NAMESPACES = NAMESPACES
STACK_ENV = {
    "ORIGIN_LATENCY_MS": "20",
    "ADMIN_TOKEN": ADMIN,
    "WARM_MAX_KEYS": str(WARM_MAX_KEYS),
}


def warm(stack: Stack, body: Any, token: str | None = ADMIN, raw: bytes | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(f"{stack.web_url}/v1/cache/w/warm", data=data, headers=headers, timeout=60)


def origin_calls(stack: Stack, prefix: str) -> dict[str, int]:
    return {k: n for k, n in stack.origin_stats()["per_key"].items() if k.startswith(prefix)}


def stored(stack: Stack, keys: list[str]) -> int:
    """How many of `keys` hold a value in Redis."""
    pipe = stack.redis.client().pipeline(transaction=False)
    for key in keys:
        pipe.exists(EntryKeys.of("w", key).entry)
    return sum(pipe.execute())


def refresh_state(stack: Stack, keys: list[str]) -> int:
    """How many of `keys` hold a lease or a queued marker."""
    pipe = stack.redis.client().pipeline(transaction=False)
    for key in keys:
        k = EntryKeys.of("w", key)
        pipe.exists(k.lease, k.queued)
    return sum(1 for n in pipe.execute() if n)


def leased(stack: Stack, keys: list[str]) -> int:
    """How many of `keys` hold a refresh lease."""
    pipe = stack.redis.client().pipeline(transaction=False)
    for key in keys:
        pipe.exists(EntryKeys.of("w", key).lease)
    return sum(pipe.execute())


def queued_tasks(stack: Stack) -> int:
    client = stack.redis.client()
    return sum(int(client.llen(name)) for name in BROKER_LISTS)


def warm_enqueued(stack: Stack) -> float:
    return web_metric(stack, "herdless_refresh_enqueued_total", namespace="w", reason="warm")


def x_cache_of(stack: Stack, keys: list[str]) -> list[tuple[int, str]]:
    local = threading.local()

    def one(key: str) -> tuple[int, str]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        r = local.session.get(stack.url("w", key), timeout=15)
        return r.status_code, r.headers.get("X-Cache", "")

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, keys))


def test_2000_keys_warmed_on_an_empty_cache_are_hits_for_2000_origin_calls_and_warming_again_costs_none(
    stack: Stack,
) -> None:
    stack.origin_config(latency_ms=20)
    keys = [f"bulk-{i}" for i in range(2000)]
    enqueued_before = warm_enqueued(stack)
    r = warm(stack, {"keys": keys})
    assert r.status_code == 202, r.text
    assert r.json() == {"enqueued": 2000, "already_fresh": 0, "in_flight": 0, "cooling_down": 0, "queue_full": 0}
    wait_until(lambda: stored(stack, keys) == len(keys), 60, "every warmed key to be stored")

    answers = x_cache_of(stack, keys)
    assert answers == [(200, "HIT")] * len(keys), [a for a in answers if a != (200, "HIT")][:5]
    calls = origin_calls(stack, "bulk-")
    assert len(calls) == 2000 and set(calls.values()) == {1}

    again = warm(stack, {"keys": keys})
    assert again.status_code == 202
    assert again.json() == {"enqueued": 0, "already_fresh": 2000, "in_flight": 0, "cooling_down": 0, "queue_full": 0}
    assert warm_enqueued(stack) - enqueued_before == 2000
    # Nothing waits in the queue, and once the workers have acknowledged their runs no key holds
    # a lease or marker: the second warm-up cost nothing.
    assert queued_tasks(stack) == 0
    wait_until(lambda: refresh_state(stack, keys) == 0, 10, "every warm refresh acknowledged")
    assert sum(origin_calls(stack, "bulk-").values()) == 2000


def test_warming_keys_that_reads_are_refreshing_and_reading_keys_a_warm_up_queued_cost_no_extra_call(
    stack: Stack,
) -> None:
    # Long enough that the refreshes the reads started are still running when the warm-up comes.
    stack.origin_config(latency_ms=1000)
    try:
        being_read = [f"busy-read-{i}" for i in range(20)]
        new = [f"busy-new-{i}" for i in range(30)]
        with ThreadPoolExecutor(max_workers=len(being_read)) as pool:
            reads = [pool.submit(requests.get, stack.url("w", key), timeout=15) for key in being_read]
            wait_until(lambda: leased(stack, being_read) == len(being_read), 10, "the reads' refreshes")
            r = warm(stack, {"keys": being_read + new})
            assert r.status_code == 202, r.text
            counts = r.json()
            assert counts["enqueued"] == len(new) and counts["cooling_down"] == 0, counts
            assert counts["in_flight"] + counts["already_fresh"] == len(being_read) and counts["in_flight"] > 0, counts
            # Readers arriving now find the warm-up's refreshes queued or running and wait for them.
            late_reads = [pool.submit(requests.get, stack.url("w", key), timeout=15) for key in new]
            assert {f.result().status_code for f in reads + late_reads} == {200}
        wait_until(lambda: stored(stack, being_read + new) == 50, 30, "every key to be stored")
        assert queued_tasks(stack) == 0
        calls = origin_calls(stack, "busy-")
        assert calls == {key: 1 for key in being_read + new}
    finally:
        stack.origin_config(latency_ms=20)


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("not JSON", b"keys: a, b", "invalid_body"),
    ("not UTF-8", b'{"keys": ["\xff"]}', "invalid_body"),
    ("a list, not an object", b'["bad-a", "bad-b"]', "invalid_body"),
    ("no keys field", b"{}", "invalid_body"),
    ("keys not a list", b'{"keys": "bad-a"}', "invalid_body"),
    ("an unknown field", b'{"keys": ["bad-a"], "soft": true}', "invalid_body"),
    ("a key that is no string", b'{"keys": ["bad-a", 7]}', "invalid_key"),
    ("an empty key", b'{"keys": ["bad-a", ""]}', "invalid_key"),
    ("a control character", b'{"keys": ["bad-a", "bad\\u0000b"]}', "invalid_key"),
    ("a key over 512 bytes", json.dumps({"keys": ["bad-a", "x" * 513]}).encode(), "invalid_key"),
    ("too many keys", json.dumps({"keys": [f"bad-{i}" for i in range(WARM_MAX_KEYS + 1)]}).encode(), "too_many_keys"),
]


def test_bad_bodies_get_400_json_and_enqueue_nothing(stack: Stack) -> None:
    valid = ["bad-a", "bad-b"] + [f"bad-{i}" for i in range(WARM_MAX_KEYS + 1)]
    before = warm_enqueued(stack)
    for name, body, error in BAD_BODIES:
        r = warm(stack, None, raw=body)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("application/json"), name
        assert r.json()["error"] == error and r.json()["detail"], (name, r.text)
    # A body no valid warm-up could reach is refused before it is read.
    huge = warm(stack, None, raw=b'{"keys": ["' + b"x" * (WARM_MAX_KEYS * 4000) + b'"]}')
    assert huge.status_code == 413 and huge.json()["error"], huge.text
    assert warm_enqueued(stack) == before
    assert refresh_state(stack, valid) == 0 and stored(stack, valid) == 0 and queued_tasks(stack) == 0
    assert origin_calls(stack, "bad-") == {}


def test_only_the_admin_token_may_warm(stack: Stack) -> None:
    keys = ["guarded-1", "guarded-2"]
    before = warm_enqueued(stack)
    no_token = warm(stack, {"keys": keys}, token=None)
    assert no_token.status_code == 401 and no_token.json()["error"] == "unauthorized"
    for token in ("nope", ADMIN + "x", ADMIN.upper()):
        r = warm(stack, {"keys": keys}, token=token)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (token, r.text)
    # The token is checked first: without it an unknown namespace looks like a known one.
    anonymous = requests.post(f"{stack.web_url}/v1/cache/nope/warm", json={"keys": keys}, timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    unknown = requests.post(
        f"{stack.web_url}/v1/cache/nope/warm",
        json={"keys": keys},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_namespace"
    assert warm_enqueued(stack) == before and refresh_state(stack, keys) == 0
    # The key named "warm" is still a key: refreshed at .../warm/refresh, read at .../warm.
    assert stack.get("w", "warm").status_code == 200
    refreshed = requests.post(
        f"{stack.web_url}/v1/cache/w/warm/refresh", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    assert refreshed.status_code == 202 and refreshed.json()["enqueued"] is True
