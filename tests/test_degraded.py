"""Degraded mode: what counts as unreachable, a value's stale-if-error bound, the probe, the fallback option."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.connection import PoolExhausted
from shared.degraded import RedisHealth, means_unreachable, stale_if_error_until_ms
from shared.namespaces import NamespaceConfigError, build_namespace
from shared.protocol import Decision, Fallback, LeaseState
from shared.replies import ReadResult
from shared.settings import Settings
from tests.stack import wait_until

ORIGIN = "http://127.0.0.1:9/items/{key}"


def read_result(**fields: object) -> ReadResult:
    base = ReadResult(
        decision=Decision.HIT,
        won_lease=False,
        now_ms=1_000,
        value=b"v",
        content_type="application/json",
        etag='"e"',
        at_ms=500,
        soft_ms=10_000,
        delta_ms=0.0,
        negative=False,
        lease_state=LeaseState.FREE,
        lease_pttl_ms=-2,
        u=1.0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_only_errors_that_say_redis_cannot_be_reached_count_as_an_outage() -> None:
    assert means_unreachable(RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))
    assert means_unreachable(RedisTimeoutError("Timeout reading from socket"))
    # A full pool is load, not an outage; an error Redis answered with is no outage either.
    assert not means_unreachable(PoolExhausted("No connection available."))
    assert not means_unreachable(ResponseError("OOM command not allowed"))


def test_a_value_is_answered_through_an_outage_until_its_own_stale_if_error_bound() -> None:
    settings = Settings()
    swr = build_namespace(
        "s", {"origin": ORIGIN, "strategy": "swr", "stale_ttl_seconds": 30, "stale_if_error_seconds": 600}, settings
    )
    assert stale_if_error_until_ms(read_result(), swr) == 10_000 + 30_000 + 600_000
    # The entry's own lifetimes (freshness = "origin") win over the namespace's.
    assert stale_if_error_until_ms(read_result(stale_ms=1_000, stale_if_error_ms=2_000), swr) == 13_000
    assert stale_if_error_until_ms(read_result(negative=True), swr) == 10_000  # a cached 404: its own life
    assert stale_if_error_until_ms(read_result(soft_ms=None), swr) == 0
    lock = build_namespace("l", {"origin": ORIGIN, "strategy": "lock"}, settings)
    assert stale_if_error_until_ms(read_result(), lock) == 10_000  # lock never serves a stale value


def test_the_probe_ends_degraded_mode_at_redis_s_first_answer() -> None:
    answers = iter([RedisConnectionError("refused"), RedisConnectionError("refused"), None])
    probes: list[int] = []
    recovered = threading.Event()

    def probe() -> None:
        probes.append(1)
        answer = next(answers)
        if answer is not None:
            raise answer

    health = RedisHealth(probe, on_recovery=recovered.set, interval_seconds=0.01)
    assert not health.down and health.down_for() is None
    assert health.failed_with(RedisConnectionError("Connection refused"))
    assert health.down and REGISTRY.get_sample_value("herdless_redis_degraded") == 1
    health.failed("again")  # a second failure while down starts no second probe
    wait_until(lambda: not health.down, 5, "the probe to find Redis back")
    assert len(probes) == 3 and recovered.is_set() and health.outages == 1
    assert REGISTRY.get_sample_value("herdless_redis_degraded") == 0
    assert not health.failed_with(PoolExhausted("No connection available."))
    assert not health.down


def test_a_subscription_back_ends_degraded_mode_without_waiting_for_the_probe() -> None:
    recovered = threading.Event()
    # A probe that would not get there in time.
    health = RedisHealth(lambda: None, on_recovery=recovered.set, interval_seconds=3600.0)
    health.failed()
    health.reachable()  # what the hub calls after its subscribe handshake
    assert not health.down and recovered.is_set()
    health.reachable()  # nothing to end: no second recovery
    health.stop()


def test_the_origin_fallback_is_an_opt_in_a_naive_namespace_cannot_take() -> None:
    settings = Settings()
    assert build_namespace("d", {"origin": ORIGIN}, settings).fallback is Fallback.NONE
    assert build_namespace("d", {"origin": ORIGIN, "fallback": "origin"}, settings).fallback is Fallback.ORIGIN
    with pytest.raises(NamespaceConfigError, match="fallback"):
        build_namespace("d", {"origin": ORIGIN, "fallback": "redis"}, settings)
    with pytest.raises(NamespaceConfigError, match="naive"):
        build_namespace("d", {"origin": ORIGIN, "strategy": "naive", "fallback": "origin"}, settings)
