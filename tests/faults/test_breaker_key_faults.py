"""Only the origin's own failures trip its breaker: keys a client chooses so that the origin
answers them 400 (or 403, 414, 422, a body too large, invalid JSON) cool down one by one, and
the breaker every namespace of that origin shares stays closed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.breaker import breaker_fields_key, breaker_state_key
from shared.protocol import BreakerState
from tests.faults.fixture_origin import HUGE_BYTES, FixtureOrigin
from tests.stack import Stack, stack_for

FAIL_MAX = 2


@dataclass
class Env:
    stack: Stack
    origin: FixtureOrigin

    @property
    def origin_name(self) -> str:
        return self.origin.base_url.removeprefix("http://")

    def breaker_state(self) -> BreakerState:
        raw = self.stack.redis.client().get(breaker_state_key(self.origin_name))
        return BreakerState(raw.decode()) if raw else BreakerState.CLOSED

    def breaker_fails(self) -> int:
        return int(self.stack.redis.client().hget(breaker_fields_key(self.origin_name), "fails") or 0)

    def calls_of(self, key: str) -> int:
        return sum(1 for c in self.origin.calls if c.path.endswith("/" + key))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    # Two namespaces on one origin host:port: one breaker between them.
    with FixtureOrigin() as origin:
        namespaces = f"""
[namespaces.victims]
origin = "{origin.base_url}/v/{{key}}"

[namespaces.bystander]
origin = "{origin.base_url}/w/{{key}}"
"""
        stack_env = {
            "BREAKER_FAIL_MAX": str(FAIL_MAX),
            "BREAKER_RESET_TIMEOUT_SECONDS": "60",
            "ORIGIN_MAX_BYTES": str(HUGE_BYTES // 2),
            "COLD_WAIT_TIMEOUT_SECONDS": "10",
        }
        with stack_for(tmp_path, namespaces, stack_env) as stack:
            yield Env(stack, origin)


# A key's own faults, and the error its cold reads answer with while it cools down.
KEY_FAULTS = [
    *[(f"status-400-chosen{i}", "origin_error") for i in range(5)],
    ("status-403-forbidden", "origin_error"),
    ("status-414-long", "origin_error"),
    ("status-422-invalid", "origin_error"),
    ("huge-body", "origin_too_large"),
    ("badjson-body", "origin_error"),
]


def test_keys_the_origin_answers_400_cool_down_and_leave_the_breaker_closed_for_every_namespace(env: Env) -> None:
    stack = env.stack
    for key, error in KEY_FAULTS:
        r = stack.get("victims", key)
        assert r.status_code == 502, (key, r.status_code, r.text)
        assert r.json()["error"] == error, (key, r.text)
        assert env.breaker_state() is BreakerState.CLOSED, f"{key} opened the breaker"
        assert env.breaker_fails() == 0, f"{key} counted against the breaker"
    # Each key cools down with its reason: read again, it answers at once, the origin not asked.
    for key, error in KEY_FAULTS:
        again = stack.get("victims", key)
        assert again.status_code == 502 and again.json()["error"] == error and "Retry-After" in again.headers
        assert env.calls_of(key) == 1, key
    # Another namespace of that origin, and another key of the same namespace, are served.
    bystander = stack.get("bystander", "innocent")
    assert bystander.status_code == 200, bystander.text
    assert bystander.json()["path"] == "/w/innocent"
    assert stack.get("victims", "fine").status_code == 200
    assert env.breaker_state() is BreakerState.CLOSED


def test_the_origins_own_failures_408_429_and_5xx_still_open_the_breaker(env: Env) -> None:
    stack = env.stack
    for i, status in enumerate([408, 429, 503]):
        r = stack.get("victims", f"status-{status}-origin-trouble")
        assert r.status_code == 502, r.text
        if i + 1 < FAIL_MAX:
            assert env.breaker_fails() == i + 1, status
    assert env.breaker_state() is BreakerState.OPEN
    refused = stack.get("bystander", "after-the-origin-failed")
    assert refused.status_code == 502 and refused.json()["error"] == "breaker_open", refused.text
