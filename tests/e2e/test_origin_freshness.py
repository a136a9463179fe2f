"""Conditional refresh (ETag/304) and origin-driven freshness (Cache-Control) end to end: real
redis-server, the demo origin, gunicorn (2 processes) and a Celery worker."""

from __future__ import annotations

from typing import Any

import requests

from shared.keys import EntryKeys
from tests.faults.observe import worker_metric
from tests.stack import Stack, cold_herd, wait_until

ADMIN = "freshness-admin-token-d5c1530dc47b78f66e"
ORIGIN_TIMEOUT_S = 2.0

NAMESPACES = f"""
[namespaces.cond]
origin = "${{ORIGIN_BASE_URL}}/items/{{key}}"
cache_ttl_seconds = 60

[namespaces.cond1]
origin = "${{ORIGIN_BASE_URL}}/items/{{key}}"
cache_ttl_seconds = 1
xfetch_beta = 1
origin_timeout_seconds = {ORIGIN_TIMEOUT_S}

[namespaces.pycond]
origin = "tests.origins:versioned"
cache_ttl_seconds = 60

[namespaces.ofresh]
origin = "${{ORIGIN_BASE_URL}}/items/{{key}}"
freshness = "origin"
cache_ttl_seconds = 60
origin_timeout_seconds = {ORIGIN_TIMEOUT_S}
min_ttl_seconds = 1
max_ttl_seconds = 30
min_stale_seconds = 5
max_stale_seconds = 100
max_stale_if_error_seconds = 50
"""


STACK_NAMESPACES = NAMESPACES
STACK_ENV = {
    "WEB_CONCURRENCY": "2",
    "ADMIN_TOKEN": ADMIN,
    # Whatever the global TTL says, freshness = "origin" follows the origin.
    "CACHE_TTL_SECONDS": "60",
}


def configure(stack: Stack, key: str, **config: Any) -> None:
    stack.origin_config(keys={key: config})


def stored(stack: Stack, namespace: str, key: str) -> dict[str, str]:
    raw = stack.redis.client().hgetall(EntryKeys.of(namespace, key).entry)
    return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}


def per_key(stack: Stack, counter: str, key: str) -> int:
    return int(stack.origin_stats()[counter].get(key, 0))


def refresh_now(stack: Stack, namespace: str, key: str) -> None:
    """A manual refresh of a stored key, waited for: a new value (or lifetime) is stored and the
    lease is free again."""
    k = EntryKeys.of(namespace, key)
    client = stack.redis.client()
    at_before = stored(stack, namespace, key)["at"]
    r = requests.post(stack.url(namespace, key) + "/refresh", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
    assert r.status_code == 202 and r.json()["enqueued"], r.text
    wait_until(
        lambda: stored(stack, namespace, key).get("at") != at_before and client.exists(k.lease, k.queued) == 0,
        10,
        f"the refresh of {key}",
    )


# -- conditional refresh ----------------------------------------------------------------------


def test_ten_refresh_cycles_of_an_unchanged_value_transfer_its_body_once(stack: Stack) -> None:
    key = "etag-ten"
    configure(stack, key, value={"fixed": key, "pad": "x" * 500})
    first = stack.get("cond", key)
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    bytes_before = worker_metric(stack, "herdless_origin_bytes_total", namespace="cond")
    not_modified_before = worker_metric(stack, "herdless_origin_calls_total", namespace="cond", outcome="not_modified")
    ats = [int(stored(stack, "cond", key)["at"])]
    for _ in range(9):
        refresh_now(stack, "cond", key)
        entry = stored(stack, "cond", key)
        ats.append(int(entry["at"]))
        assert entry["v"].encode() == first.content
    # Ten cycles: one full fetch, then nine 304s, each starting a new lifetime for the same bytes.
    assert per_key(stack, "bodies_per_key", key) == 1
    assert per_key(stack, "not_modified_per_key", key) == 9
    assert (
        worker_metric(stack, "herdless_origin_calls_total", namespace="cond", outcome="not_modified")
        - not_modified_before
        == 9
    )
    assert worker_metric(stack, "herdless_origin_bytes_total", namespace="cond") == bytes_before
    assert ats == sorted(set(ats)), f"every 304 must restart the value's life: {ats}"
    again = stack.get("cond", key)
    assert again.headers["X-Cache"] == "HIT" and again.content == first.content
    assert again.headers["ETag"] == first.headers["ETag"]


def test_a_value_changed_at_the_origin_is_served_within_one_ttl(stack: Stack) -> None:
    key = "etag-change"
    configure(stack, key, value="v1")
    assert stack.get("cond1", key).json() == "v1"
    ttl_s = 1.0
    # Reads keep the key refreshed every TTL; an unchanged value costs 304s, never a body.
    wait_until(
        lambda: stack.get("cond1", key) and per_key(stack, "not_modified_per_key", key) >= 2,
        3 * (ttl_s + ORIGIN_TIMEOUT_S),
        "two revalidations",
    )
    assert per_key(stack, "bodies_per_key", key) == 1
    configure(stack, key, value="v2")
    wait_until(lambda: stack.get("cond1", key).json() == "v2", ttl_s + ORIGIN_TIMEOUT_S, "the new value")
    assert per_key(stack, "bodies_per_key", key) == 2


def test_a_callable_origin_revalidates_through_its_validator(stack: Stack) -> None:
    key = "callable-etag"
    assert stack.get("pycond", key).json() == {"key": key, "version": 1}
    bytes_before = worker_metric(stack, "herdless_origin_bytes_total", namespace="pycond")
    for _ in range(2):
        refresh_now(stack, "pycond", key)
    assert worker_metric(stack, "herdless_origin_calls_total", namespace="pycond", outcome="not_modified") == 2
    # The refresh is counted once its run is over, just after the write that refresh_now saw.
    wait_until(
        lambda: worker_metric(stack, "herdless_refresh_total", namespace="pycond", outcome="revalidated") == 2,
        5,
        "two revalidated refreshes",
    )
    assert worker_metric(stack, "herdless_origin_bytes_total", namespace="pycond") == bytes_before
    assert stored(stack, "pycond", key)["oetag"] == '"v1"'


# -- freshness = "origin" -----------------------------------------------------------------------


def test_max_age_sets_a_two_second_life_whatever_the_ttl_settings(stack: Stack) -> None:
    key = "max-age-2"
    configure(stack, key, cache_control="max-age=2")
    first = stack.get("ofresh", key)
    assert first.headers["X-Cache"] == "MISS"
    assert int(stored(stack, "ofresh", key)["ttl"]) == 2000
    assert int(first.headers["Cache-Control"].split(",")[0].removeprefix("max-age=")) <= 2
    # Not 60 s: past its 2 s the next reads refresh it, in at most one origin call (the extra
    # second is the polling and queueing allowance).
    wait_until(lambda: stack.get("ofresh", key).json()["count"] >= 2, 2 + ORIGIN_TIMEOUT_S + 1, "a refresh after 2 s")


def test_s_maxage_wins_over_max_age(stack: Stack) -> None:
    key = "s-maxage"
    configure(stack, key, cache_control="max-age=20, s-maxage=3, stale-while-revalidate=10, stale-if-error=40")
    stack.get("ofresh", key)
    entry = stored(stack, "ofresh", key)
    assert (int(entry["ttl"]), int(entry["st"]), int(entry["sie"])) == (3000, 10_000, 40_000)
    assert stack.get("ofresh", key).headers["Cache-Control"].endswith("stale-while-revalidate=10")


def test_origin_lifetimes_outside_the_namespace_bounds_are_clamped(stack: Stack) -> None:
    configure(stack, "too-long", cache_control="max-age=3600, stale-while-revalidate=9999, stale-if-error=9999")
    configure(stack, "too-short", cache_control="max-age=0, stale-while-revalidate=1")
    stack.get("ofresh", "too-long")
    stack.get("ofresh", "too-short")
    long_entry, short_entry = stored(stack, "ofresh", "too-long"), stored(stack, "ofresh", "too-short")
    assert (int(long_entry["ttl"]), int(long_entry["st"]), int(long_entry["sie"])) == (30_000, 100_000, 50_000)
    assert (int(short_entry["ttl"]), int(short_entry["st"])) == (1000, 5000)


def test_a_no_store_answer_reaches_every_waiter_of_a_herd_with_one_call_and_is_never_cached(stack: Stack) -> None:
    key = "no-store"
    configure(stack, key, cache_control="no-store")
    results = cold_herd(stack, "ofresh", [key], 20)
    assert {status for _, status, _ in results} == {200}
    assert len({body for _, _, body in results}) == 1
    assert per_key(stack, "per_key", key) == 1
    assert stored(stack, "ofresh", key) == {}
    wait_until(
        lambda: worker_metric(stack, "herdless_refresh_total", namespace="ofresh", outcome="uncacheable") >= 1,
        5,
        "the refresh counted as uncacheable",
    )
    # Afterwards: never from the cache. The next read waits for a call of its own.
    later = stack.get("ofresh", key)
    assert later.status_code == 200 and later.headers["X-Cache"] == "MISS"
    assert later.headers["Cache-Control"] == "no-store"
    assert later.json()["count"] == 2 and per_key(stack, "per_key", key) == 2


def test_private_answers_are_not_stored_either(stack: Stack) -> None:
    key = "private"
    configure(stack, key, cache_control="private, max-age=60")
    assert stack.get("ofresh", key).json()["count"] == 1
    assert stack.get("ofresh", key).json()["count"] == 2
    assert stored(stack, "ofresh", key) == {}


def test_malformed_cache_control_falls_back_to_the_namespace_ttl_and_is_logged_once(stack: Stack) -> None:
    keys = ["bad-cc-1", "bad-cc-2"]
    for key in keys:
        configure(stack, key, cache_control="max-age=soon")
        assert stack.get("ofresh", key).status_code == 200
        refresh_now(stack, "ofresh", key)
        refresh_now(stack, "ofresh", key)
        assert int(stored(stack, "ofresh", key)["ttl"]) == 60_000
    assert per_key(stack, "per_key", keys[0]) == per_key(stack, "per_key", keys[1]) == 3
    log = stack.procs["w1"].output()
    assert log.count("malformed Cache-Control") == 1, log[-3000:]
