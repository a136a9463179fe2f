"""An origin that misbehaves (too slow, too big, broken JSON, not listening): each is an origin
error, counted, while clients keep getting the stale value. Only the origin's own failures (too
slow, not listening) are fed to the breaker; a body too big or broken is the key's problem."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests

from shared.breaker import breaker_fields_key
from tests.faults.fixture_origin import FixtureOrigin
from tests.faults.observe import worker_metric
from tests.stack import Stack, stack_for, wait_until

MAX_BYTES = 2000


@dataclass
class Env:
    stack: Stack
    broken_json: FixtureOrigin
    refusing: FixtureOrigin


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("origin-faults")
    with FixtureOrigin() as broken_json, FixtureOrigin() as refusing:
        namespaces = f"""
[namespaces.slow]
strategy = "swr"
origin = "${{ORIGIN_BASE_URL}}/items/{{key}}"
cache_ttl_seconds = 1
origin_timeout_seconds = 0.5

[namespaces.big]
strategy = "swr"
origin = "${{ORIGIN_BASE_URL}}/items/{{key}}"
cache_ttl_seconds = 1

[namespaces.json]
strategy = "swr"
origin = "{broken_json.base_url}/v/{{key}}"
cache_ttl_seconds = 1

[namespaces.refused]
strategy = "swr"
origin = "{refusing.base_url}/v/{{key}}"
cache_ttl_seconds = 1
"""
        stack_env = {
            "ORIGIN_LATENCY_MS": "10",
            "ORIGIN_MAX_BYTES": str(MAX_BYTES),
            "BREAKER_FAIL_MAX": "1000",  # count failures here; the breaker test opens it
            "COLD_WAIT_TIMEOUT_SECONDS": "5",
        }
        with stack_for(tmp, namespaces, stack_env) as stack:
            yield Env(stack, broken_json, refusing)


def _fail_counter(env: Env, origin_name: str) -> int:
    raw = env.stack.redis.client().hget(breaker_fields_key(origin_name), "fails")
    return int(raw or 0)


FAULTS: dict[str, tuple[str, str, Callable[[Env], None], Callable[[Env], None]]] = {
    # name: (namespace, expected origin outcome, break it, repair it)
    "slower than ORIGIN_TIMEOUT_SECONDS": (
        "slow",
        "timeout",
        lambda e: e.stack.origin_config(latency_ms=1500),
        lambda e: e.stack.origin_config(latency_ms=10),
    ),
    "body over ORIGIN_MAX_BYTES": (
        "big",
        "error",
        lambda e: e.stack.origin_config(body_bytes=MAX_BYTES * 3),
        lambda e: e.stack.origin_config(body_bytes=0),
    ),
    "invalid JSON under application/json": (
        "json",
        "error",
        lambda e: e.broken_json.set(mode="bad_json"),
        lambda e: e.broken_json.set(mode="ok"),
    ),
    "connection refused": (
        "refused",
        "error",
        lambda e: e.refusing.stop(),
        lambda e: e.refusing.start(),
    ),
}


# The faults that count against the breaker: the origin's own, not a key's.
TRIPS_BREAKER = {"slow": True, "big": False, "json": False, "refused": True}

# The error code a cold key of each namespace answers with while its origin is broken.
COLD_ERROR = {"slow": "origin_timeout", "big": "origin_too_large", "json": "origin_error", "refused": "origin_error"}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_origin_fault_is_counted_and_the_stale_value_kept(env: Env, fault: str) -> None:
    namespace, outcome, break_it, repair = FAULTS[fault]
    stack = env.stack
    key = f"victim-{namespace}"
    first = stack.get(namespace, key)
    assert first.status_code == 200, first.text
    value = first.content
    origin_base = {
        "slow": stack.origin_url,
        "big": stack.origin_url,
        "json": env.broken_json.base_url,
        "refused": env.refusing.base_url,
    }[namespace]
    origin_name = origin_base.removeprefix("http://")  # the breaker is per origin host:port
    errors_before = worker_metric(stack, "herdless_origin_calls_total", namespace=namespace, outcome=outcome)
    failed_before = worker_metric(stack, "herdless_refresh_total", namespace=namespace, outcome="origin_error")

    break_it(env)
    try:
        reads: list[requests.Response] = []

        def failure_counted() -> bool:
            t0 = time.monotonic()
            r = stack.get(namespace, key)
            r.elapsed_s = time.monotonic() - t0  # type: ignore[attr-defined]
            reads.append(r)
            return worker_metric(stack, "herdless_origin_calls_total", namespace=namespace, outcome=outcome) > (
                errors_before
            )

        wait_until(failure_counted, 15, f"an origin {outcome} for '{fault}'", interval=0.1)
        fails = _fail_counter(env, origin_name)
        if TRIPS_BREAKER[namespace]:
            assert fails >= 1, "the breaker did not count the failure"
        else:
            assert fails == 0, "the breaker counted a fault of the key"
        wait_until(
            lambda: (
                worker_metric(stack, "herdless_refresh_total", namespace=namespace, outcome="origin_error")
                > failed_before
            ),
            5,
            "the refresh to be recorded as an origin error",
        )
        # The stale value outlives its TTL: still served, at cache speed, after the failure.
        reads += [stack.get(namespace, key) for _ in range(3)]
        assert all(r.status_code == 200 and r.content == value for r in reads), [r.status_code for r in reads]
        assert reads[-1].headers["X-Cache"] == "STALE"
        assert max(getattr(r, "elapsed_s", 0) for r in reads) < 0.5

        # A key with nothing stale to fall back on gets a JSON 502 (no hang, no 500).
        t0 = time.monotonic()
        cold = stack.get(namespace, f"cold-{namespace}")
        assert cold.status_code == 502, cold.text
        assert cold.json()["error"] == COLD_ERROR[namespace] and "Retry-After" in cold.headers
        assert time.monotonic() - t0 < 3
        log = stack.procs["w1"].output()
        assert f"refresh of {namespace}/'{key}' failed" in log
        assert "Traceback" not in log.split(f"refresh of {namespace}/", 1)[-1]
    finally:
        repair(env)

    # The origin is healthy again: the next refresh after the cooldown replaces the stale value.
    def recovered() -> bool:
        r = stack.get(namespace, key)
        return r.status_code == 200 and r.content != value

    wait_until(recovered, 15, f"a successful refresh after '{fault}' was repaired", interval=0.2)
    assert _fail_counter(env, origin_name) == 0  # a success resets the breaker's count
    json.loads(stack.get(namespace, key).content)
