"""One circuit breaker per origin, its state shared by every worker process and host through Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pybreaker

from shared.metrics import BREAKER_TRANSITIONS
from shared.origin import NotFound
from shared.settings import Settings
from shared.store import new_token

T = TypeVar("T")


class BreakerOpen(Exception):
    """The breaker refused the call; retry_after_ms says when a probe may be tried."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"circuit breaker open, retry in {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


def breaker_namespace(origin_name: str) -> str:
    return f"hl:breaker:{origin_name}"


def breaker_state_key(origin_name: str) -> str:
    return f"{breaker_namespace(origin_name)}:pybreaker:state"


class _CountingBreaker(pybreaker.CircuitBreaker):
    """Counts the transitions this process makes (not the ones it merely notices)."""

    def open(self) -> bool:
        result = super().open()
        BREAKER_TRANSITIONS.labels(self.name, "open").inc()
        return result

    def half_open(self) -> None:
        super().half_open()
        BREAKER_TRANSITIONS.labels(self.name, "half-open").inc()

    def close(self) -> None:
        super().close()
        BREAKER_TRANSITIONS.labels(self.name, "closed").inc()


# Release the probe slot only if it is still ours.
_RELEASE_PROBE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class OriginBreaker:
    """pybreaker with Redis storage, plus a Redis probe slot so that after the reset timeout
    exactly one call at a time, across all processes, tests the origin."""

    def __init__(self, client: Any, origin_name: str, settings: Settings) -> None:
        self.origin_name = origin_name
        self.redis = client
        self.reset_timeout = settings.breaker_reset_timeout_seconds
        storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED,
            client,
            namespace=breaker_namespace(origin_name),
            cluster_mode=settings.redis_cluster,
        )
        self.breaker = _CountingBreaker(
            fail_max=settings.breaker_fail_max,
            reset_timeout=settings.breaker_reset_timeout_seconds,
            exclude=[NotFound],
            state_storage=storage,
            throw_new_error_on_trip=False,
            name=origin_name,
        )
        self._probe_key = f"{breaker_namespace(origin_name)}:probe"
        self._probe_ttl_ms = int((settings.origin_timeout_seconds + settings.lease_ttl_seconds) * 1000)
        self._release_probe = client.register_script(_RELEASE_PROBE)

    @property
    def state(self) -> str:
        return self.breaker.current_state

    def remaining_open_ms(self) -> int:
        opened_at = self.breaker._state_storage.opened_at
        if opened_at is None:
            return 0
        left = opened_at.timestamp() + self.reset_timeout - time.time()
        return max(0, int(left * 1000))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        state = self.state
        probe = None
        if state != pybreaker.STATE_CLOSED:
            remaining = self.remaining_open_ms()
            if state == pybreaker.STATE_OPEN and remaining > 0:
                raise BreakerOpen(remaining)
            probe = new_token()
            if not self.redis.set(self._probe_key, probe, nx=True, px=self._probe_ttl_ms):
                raise BreakerOpen(max(1000, int(self.reset_timeout * 1000) // 4))
        try:
            return self.breaker.call(fn, *args)
        except pybreaker.CircuitBreakerError:
            raise BreakerOpen(self.remaining_open_ms() or int(self.reset_timeout * 1000)) from None
        finally:
            if probe is not None:
                self._release_probe(keys=[self._probe_key], args=[probe])
