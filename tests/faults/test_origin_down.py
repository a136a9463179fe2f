"""An origin down for long: a stale value lasts until its stale-if-error window ends, then 502;
while the breaker is open a cold key gets 502 without the origin being called."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shared.breaker import breaker_state_key
from shared.keys import EntryKeys
from tests.faults.fixture_origin import FixtureOrigin
from tests.faults.observe import worker_metric
from tests.stack import Stack, stack_for, wait_until

FAIL_MAX = 2
RESET_SECONDS = 30
COLD_WAIT_SECONDS = 10
# Namespace `sie`: fresh 0.5 s, served stale 1 s more (time for the failed refresh to stretch
# it), and while the origin fails 1 s more.
SOFT_TTL_MS, STALE_TTL_MS, STALE_IF_ERROR_MS = 500, 1000, 1000


@dataclass
class Env:
    stack: Stack
    down: FixtureOrigin  # fails from the start: its breaker opens
    flaky: FixtureOrigin  # fails when a test says so


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("origin-down")
    # Each origin host:port has a breaker of its own, so the tests cannot open each other's.
    with FixtureOrigin(mode="fail") as down, FixtureOrigin() as flaky:
        namespaces = f"""
[namespaces.down]
origin = "{down.base_url}/v/{{key}}"

[namespaces.sie]
strategy = "swr"
origin = "{flaky.base_url}/v/{{key}}"
cache_ttl_seconds = {SOFT_TTL_MS / 1000}
stale_ttl_seconds = {STALE_TTL_MS / 1000}
stale_if_error_seconds = {STALE_IF_ERROR_MS / 1000}
"""
        stack_env = {
            "BREAKER_FAIL_MAX": str(FAIL_MAX),
            "BREAKER_RESET_TIMEOUT_SECONDS": str(RESET_SECONDS),
            "COLD_WAIT_TIMEOUT_SECONDS": str(COLD_WAIT_SECONDS),
        }
        with stack_for(tmp, namespaces, stack_env) as stack:
            yield Env(stack, down, flaky)


def redis_now_ms(stack: Stack) -> int:
    seconds, micros = stack.redis.client().time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_a_cold_key_gets_502_breaker_open_without_an_origin_call_while_the_breaker_is_open(env: Env) -> None:
    stack, down = env.stack, env.down
    redis = stack.redis.client()
    state_key = breaker_state_key(down.base_url.removeprefix("http://"))
    opened = 0

    def breaker_open() -> bool:
        nonlocal opened
        opened += 1
        r = stack.get("down", f"opener-{opened}")
        assert r.status_code == 502 and r.json()["error"] == "origin_error", r.text
        return redis.get(state_key) == b"open"

    wait_until(breaker_open, 20, f"{FAIL_MAX} failed cold keys to open the breaker", interval=0.05)
    calls = len(down.calls)
    refused = worker_metric(stack, "herdless_refresh_total", namespace="down", outcome="breaker_open")

    t0 = time.monotonic()
    cold = stack.get("down", "cold-while-open")
    elapsed = time.monotonic() - t0
    assert cold.status_code == 502, cold.text
    assert cold.headers["Content-Type"].startswith("application/json")
    assert cold.json()["error"] == "breaker_open" and "circuit breaker" in cold.json()["detail"]
    # Retry when the breaker may let a probe through, not at once and not after it.
    assert 1 <= int(cold.headers["Retry-After"]) <= RESET_SECONDS
    # Answered when the refresh was refused, not after the cold-wait timeout.
    assert elapsed < COLD_WAIT_SECONDS
    assert redis.get(state_key) == b"open"
    assert len(down.calls) == calls, [c.path for c in down.calls[calls:]]
    # The worker counts the refused refresh just after it wakes the waiters.
    wait_until(
        lambda: worker_metric(stack, "herdless_refresh_total", namespace="down", outcome="breaker_open") == refused + 1,
        5,
        "the refresh refused by the breaker to be counted",
    )


def test_a_stale_value_is_served_through_its_stale_if_error_window_then_502(env: Env) -> None:
    stack, flaky = env.stack, env.flaky
    key = "kept-through-an-outage"
    first = stack.get("sie", key)
    assert first.status_code == 200
    soft = int(stack.redis.client().hget(EntryKeys.of("sie", key).entry, "soft"))
    flaky.set(mode="fail")
    try:
        # (Redis ms before, Redis ms after, response) until the value is gone.
        answers = []

        def value_gone() -> bool:
            before = redis_now_ms(stack)
            r = stack.get("sie", key)
            answers.append((before, redis_now_ms(stack), r))
            return r.status_code != 200

        deadline_s = (soft + STALE_TTL_MS + STALE_IF_ERROR_MS - redis_now_ms(stack)) / 1000 + 5
        wait_until(value_gone, deadline_s, "the stale-if-error window to end", interval=0.05)
    finally:
        flaky.set(mode="ok")

    served = [(before, after) for before, after, r in answers if r.status_code == 200]
    assert all(r.content == first.content for _, _, r in answers if r.status_code == 200)
    assert any(r.headers["X-Cache"] == "STALE" for _, _, r in answers if r.status_code == 200)
    # Served past the plain stale window: the failed refresh stretched the stored lifetime...
    assert any(after > soft + STALE_TTL_MS for _, after in served), (soft, served[-3:])
    # ...by the stale-if-error window and no more.
    assert all(before <= soft + STALE_TTL_MS + STALE_IF_ERROR_MS for before, _ in served)
    before, after, gone = answers[-1]
    assert after >= soft + STALE_TTL_MS + STALE_IF_ERROR_MS
    assert gone.status_code == 502, gone.text
    # The failure behind it: the origin's own error, or the breaker that its failures opened.
    assert gone.json()["error"] in ("origin_error", "breaker_open") and "Retry-After" in gone.headers
    assert len(env.flaky.calls) >= 2  # the first call, then the failed refresh(es)
