"""Every origin call has a total deadline: a trickled HTTP body and a callable that never
returns are both cut off at ORIGIN_TIMEOUT_SECONDS, not left to run for ever."""

from __future__ import annotations

import threading
import time

import pytest

from shared.namespaces import build_namespace
from shared.origin import OriginTimeout, make_origin
from shared.settings import Settings
from tests.faults.fixture_origin import FixtureOrigin

RELEASE = threading.Event()


def never_returns(key: str) -> str:
    RELEASE.wait(30)
    return key


def test_a_trickled_http_body_is_cut_off_at_the_deadline() -> None:
    # Before the fix urllib3's read timeout bounded each socket read, not the call: a body sent
    # one byte every 0.2 s with a 1 s timeout kept the refresh (and its purge-racing write) alive.
    with FixtureOrigin(mode="trickle") as origin:
        ns = build_namespace("t", {"origin": origin.base_url + "/items/{key}", "origin_timeout_seconds": 1}, Settings())
        started = time.monotonic()
        with pytest.raises(OriginTimeout):
            make_origin(ns, 1 << 20).fetch("slow-body")
        took = time.monotonic() - started
        # The whole body would take len(body) * 0.2 s, several seconds; the deadline is 1 s.
        assert took < 1 + 0.5, took


def test_a_callable_that_never_returns_is_abandoned_at_the_deadline() -> None:
    ns = build_namespace(
        "t", {"origin": "tests.test_origin_deadline:never_returns", "origin_timeout_seconds": 0.5}, Settings()
    )
    started = time.monotonic()
    try:
        with pytest.raises(OriginTimeout):
            make_origin(ns, 1 << 20).fetch("stuck")
        assert time.monotonic() - started < 0.5 + 0.5
    finally:
        RELEASE.set()
