"""The shared circuit breaker against a real Redis: calls overlap, the Redis clock decides, one probe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from shared.breaker import (
    ADMIT,
    RECORD,
    SNAPSHOT,
    BreakerOpen,
    OriginBreaker,
    breaker_state_key,
    counts_against_breaker,
)
from shared.namespaces import build_namespace
from shared.origin import KeyFault, NotFound, OriginError, OriginTooLarge, make_origin, status_error
from shared.protocol import BreakerOutcome, BreakerState, BreakerVerdict
from shared.settings import Settings
from shared.store import make_redis
from tests.stack import RedisServer, wait_until

REPO = Path(__file__).resolve().parent.parent
ORIGIN = "origin.test:8080"


def breaker_settings(redis_server: RedisServer, **overrides: Any) -> Settings:
    redis_server.client().flushall()
    opts: dict[str, Any] = {"breaker_fail_max": 3, "breaker_reset_timeout_seconds": 30}
    opts.update(overrides)
    return Settings(redis_url=redis_server.url, **opts)


def make_breaker(settings: Settings, origin: str = ORIGIN) -> OriginBreaker:
    # Its own client, as a separate worker process would have.
    return OriginBreaker(make_redis(settings), origin, settings)


def failing() -> None:
    raise OriginError("error", "origin answered 500")


def transitions(origin: str, to: str) -> float:
    return REGISTRY.get_sample_value("herdless_breaker_transitions_total", {"origin": origin, "to": to}) or 0.0


def redis_now_ms(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def stored_state(redis_server: RedisServer, origin: str = ORIGIN) -> bytes | None:
    value: bytes | None = redis_server.client().get(breaker_state_key(origin))
    return value


def open_breaker(breaker: OriginBreaker) -> None:
    for _ in range(breaker.fail_max):
        with pytest.raises(OriginError):
            breaker.call(failing)
    assert breaker.state == "open"


def test_fifty_concurrent_calls_of_one_origin_overlap_in_threads(redis_server: RedisServer) -> None:
    breaker = make_breaker(breaker_settings(redis_server))
    barrier = threading.Barrier(50, timeout=10)
    results: list[int] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            # Only passes if all 50 calls are inside the origin call at once.
            results.append(breaker.call(barrier.wait))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors, errors[:3]
    assert sorted(results) == list(range(50))
    assert breaker.state == "closed"


GEVENT_OVERLAP = """
from gevent import monkey
monkey.patch_all()
import json, sys, threading
import gevent
from shared.breaker import OriginBreaker
from shared.settings import Settings
from shared.store import make_redis

settings = Settings(redis_url=sys.argv[1])
breaker = OriginBreaker(make_redis(settings), "origin.gevent:80", settings)
barrier = threading.Barrier(50, timeout=10)  # patched: a greenlet-aware barrier
jobs = [gevent.spawn(breaker.call, barrier.wait) for _ in range(50)]
gevent.joinall(jobs, timeout=20)
print(json.dumps({"ok": sum(1 for j in jobs if j.successful()),
                  "errors": [repr(j.exception) for j in jobs if j.exception][:3]}))
"""


def test_fifty_concurrent_calls_of_one_origin_overlap_under_gevent(redis_server: RedisServer) -> None:
    redis_server.client().flushall()
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_OVERLAP, redis_server.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"ok": 50, "errors": []}


def test_opens_after_fail_max_failures_and_refuses_with_retry_after_from_redis_time(
    redis_server: RedisServer,
) -> None:
    settings = breaker_settings(redis_server)
    breaker = make_breaker(settings)
    opened_before = transitions(ORIGIN, "open")
    for _ in range(2):
        with pytest.raises(OriginError):
            breaker.call(failing)
    assert breaker.state == "closed"
    assert stored_state(redis_server) in (None, b"closed")

    client = redis_server.client()
    before = redis_now_ms(client)
    with pytest.raises(OriginError):  # the origin's own error, not a breaker error, on the trip
        breaker.call(failing)
    assert breaker.state == "open"
    assert stored_state(redis_server) == b"open"
    assert transitions(ORIGIN, "open") == opened_before + 1

    called: list[int] = []
    start = redis_now_ms(client)
    with pytest.raises(BreakerOpen) as refused:
        breaker.call(lambda: called.append(1))
    end = redis_now_ms(client)
    assert called == []
    # opened_at lies between `before` and `start` on the Redis clock; the answer is measured there.
    assert before + 30_000 - end <= refused.value.retry_after_ms <= start + 30_000 - before + 1
    assert 0 < breaker.remaining_open_ms() <= 30_000


def test_not_found_is_not_a_failure(redis_server: RedisServer) -> None:
    breaker = make_breaker(breaker_settings(redis_server, breaker_fail_max=2))

    def not_found() -> None:
        raise NotFound("no such item")

    for _ in range(5):
        with pytest.raises(NotFound):
            breaker.call(not_found)
    assert breaker.state == "closed"
    assert breaker.snapshot().fails == 0


@pytest.mark.parametrize("status", [400, 403, 414, 422, 451])
def test_a_key_fault_is_not_a_failure_but_5xx_408_and_429_are(redis_server: RedisServer, status: int) -> None:
    breaker = make_breaker(breaker_settings(redis_server, breaker_fail_max=2))

    def key_fault() -> None:
        raise status_error(status)

    for fault in (key_fault, invalid_json, too_large):
        for _ in range(5):
            with pytest.raises(KeyFault):
                breaker.call(fault)
    assert breaker.state is BreakerState.CLOSED and breaker.snapshot().fails == 0
    for trouble in (500, 503, 408, 429):
        assert counts_against_breaker(status_error(trouble)), trouble
    with pytest.raises(OriginError):
        breaker.call(origin_trouble)
    assert breaker.snapshot().fails == 1


def origin_trouble() -> None:
    raise status_error(503)


def invalid_json() -> None:
    raise KeyFault("origin sent invalid JSON")


def too_large() -> None:
    raise OriginTooLarge("origin body exceeds ORIGIN_MAX_BYTES=1")


def test_a_callable_origin_refusing_a_key_with_key_fault_is_not_counted_but_its_other_errors_are(
    redis_server: RedisServer,
) -> None:
    settings = breaker_settings(redis_server, breaker_fail_max=2)
    origin = make_origin(build_namespace("picky", {"origin": "tests.origins:picky"}, settings), 1 << 20)
    breaker = make_breaker(settings, "tests.origins:picky")
    for i in range(5):
        with pytest.raises(KeyFault):
            breaker.call(origin.fetch, f"malformed-{i}")
    assert breaker.state is BreakerState.CLOSED and breaker.snapshot().fails == 0
    with pytest.raises(OriginError) as failed:
        breaker.call(origin.fetch, "down-1")
    assert not isinstance(failed.value, KeyFault) and breaker.snapshot().fails == 1


def test_a_key_fault_of_the_probe_closes_the_breaker_the_origin_answered(redis_server: RedisServer) -> None:
    breaker = make_breaker(breaker_settings(redis_server, breaker_fail_max=1, breaker_reset_timeout_seconds=0.2))
    open_breaker(breaker)
    wait_until(lambda: breaker.remaining_open_ms() == 0, 5, "the reset timeout to pass on the Redis clock")
    with pytest.raises(KeyFault):
        breaker.call(invalid_json)
    assert breaker.state is BreakerState.CLOSED


def test_every_word_the_breaker_scripts_store_or_return_is_a_protocol_word() -> None:
    fields = {"fails", "opened_at", "probe", "probe_until"}
    words = set(BreakerState) | set(BreakerVerdict) | set(BreakerOutcome) | fields | {""}
    for script in (ADMIT, RECORD, SNAPSHOT):
        body = script.split("local now = now_ms()", 1)[-1]
        quoted = set(re.findall(r"'([^']*)'", body)) - {"GET", "SET", "HGET", "HSET", "HDEL", "HINCRBY"}
        assert quoted <= words, quoted - words


def test_a_success_resets_the_consecutive_failure_count(redis_server: RedisServer) -> None:
    breaker = make_breaker(breaker_settings(redis_server))
    for _ in range(2):
        with pytest.raises(OriginError):
            breaker.call(failing)
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.snapshot().fails == 0
    for _ in range(2):
        with pytest.raises(OriginError):
            breaker.call(failing)
    assert breaker.state == "closed"


def start_probe(breaker: OriginBreaker, fn: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            breaker.call(fn)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_half_open_lets_exactly_one_probe_through_across_processes_and_a_good_probe_closes(
    redis_server: RedisServer,
) -> None:
    settings = breaker_settings(redis_server, breaker_fail_max=1, breaker_reset_timeout_seconds=0.5)
    worker_a, worker_b = make_breaker(settings), make_breaker(settings)
    half_open_before = transitions(ORIGIN, "half-open")
    closed_before = transitions(ORIGIN, "closed")
    open_breaker(worker_a)
    assert worker_b.state == "open"
    wait_until(lambda: worker_b.remaining_open_ms() == 0, 5, "the reset timeout to pass on the Redis clock")

    in_probe, release = threading.Event(), threading.Event()
    origin_calls: list[str] = []

    def slow_good_origin() -> str:
        origin_calls.append("probe")
        in_probe.set()
        assert release.wait(10)
        return "fine"

    probe, errors = start_probe(worker_a, slow_good_origin)
    assert in_probe.wait(5)
    assert stored_state(redis_server) == b"half-open"
    assert worker_b.state == "half-open"
    for other in (worker_b, worker_a, worker_b):
        with pytest.raises(BreakerOpen) as refused:
            other.call(lambda: origin_calls.append("extra"))
        assert refused.value.retry_after_ms >= 1000
    assert origin_calls == ["probe"]

    release.set()
    probe.join(10)
    assert errors == []
    assert stored_state(redis_server) == b"closed"
    assert worker_b.call(lambda: "through") == "through"
    assert transitions(ORIGIN, "half-open") == half_open_before + 1
    assert transitions(ORIGIN, "closed") == closed_before + 1


def test_a_failed_probe_reopens_for_a_full_reset_timeout(redis_server: RedisServer) -> None:
    settings = breaker_settings(redis_server, breaker_fail_max=1, breaker_reset_timeout_seconds=0.5)
    breaker = make_breaker(settings)
    open_breaker(breaker)
    wait_until(lambda: breaker.remaining_open_ms() == 0, 5, "the reset timeout to pass on the Redis clock")
    opened_before = transitions(ORIGIN, "open")

    with pytest.raises(OriginError):
        breaker.call(failing)
    assert stored_state(redis_server) == b"open"
    assert transitions(ORIGIN, "open") == opened_before + 1
    assert 300 < breaker.remaining_open_ms() <= 500
    with pytest.raises(BreakerOpen):
        breaker.call(lambda: None)


def test_a_cancelled_probe_frees_the_probe_at_once(redis_server: RedisServer) -> None:
    settings = breaker_settings(redis_server, breaker_fail_max=1, breaker_reset_timeout_seconds=0.5)
    breaker = make_breaker(settings)
    open_breaker(breaker)
    wait_until(lambda: breaker.remaining_open_ms() == 0, 5, "the reset timeout to pass on the Redis clock")

    class Cancelled(BaseException):
        pass

    def cancelled() -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        breaker.call(cancelled)
    assert breaker.state == "half-open"
    assert breaker.call(lambda: "probe again") == "probe again"  # not refused until probe_until
    assert breaker.state == "closed"


KILLED_PROBE = """
import os, signal, sys
from shared.breaker import OriginBreaker
from shared.settings import Settings
from shared.store import make_redis

settings = Settings(redis_url=sys.argv[1], breaker_fail_max=1, breaker_reset_timeout_seconds=0.3,
                    origin_timeout_seconds=0.2, lease_ttl_seconds=0.2)
breaker = OriginBreaker(make_redis(settings), sys.argv[2], settings)
breaker.call(lambda: os.kill(os.getpid(), signal.SIGKILL))  # dies holding the probe
"""


def test_a_probe_whose_process_was_killed_frees_itself(redis_server: RedisServer) -> None:
    settings = breaker_settings(
        redis_server,
        breaker_fail_max=1,
        breaker_reset_timeout_seconds=0.3,
        origin_timeout_seconds=0.2,
        lease_ttl_seconds=0.2,  # probe ttl = origin timeout + lease ttl = 0.4 s
    )
    breaker = make_breaker(settings)
    open_breaker(breaker)
    wait_until(lambda: breaker.remaining_open_ms() == 0, 5, "the reset timeout to pass on the Redis clock")
    killed = subprocess.run([sys.executable, "-c", KILLED_PROBE, redis_server.url, ORIGIN], cwd=REPO, timeout=60)
    assert killed.returncode == -9
    assert breaker.state == "half-open"
    with pytest.raises(BreakerOpen):  # the dead probe still holds the half-open slot
        breaker.call(lambda: None)

    def probe_through() -> bool:
        try:
            return breaker.call(lambda: True)
        except BreakerOpen:
            return False

    wait_until(probe_through, 5, "the dead probe's slot to expire on the Redis clock")
    assert breaker.state == "closed"


TZ_CHECK = """
import json, sys, time
from shared.breaker import OriginBreaker
from shared.origin import OriginError
from shared.settings import Settings
from shared.store import make_redis

settings = Settings(redis_url=sys.argv[1], breaker_fail_max=1, breaker_reset_timeout_seconds=30)
breaker = OriginBreaker(make_redis(settings), "origin.tz:80", settings)
def fail():
    raise OriginError("error", "boom")
try:
    breaker.call(fail)
except OriginError:
    pass
print(json.dumps({"utc_offset_s": time.timezone, "state": breaker.state,
                  "remaining_ms": breaker.remaining_open_ms()}))
"""


@pytest.mark.parametrize("tz", ["America/Los_Angeles", "Etc/GMT+8"])
def test_remaining_open_time_is_right_west_of_utc(redis_server: RedisServer, tz: str) -> None:
    redis_server.client().flushall()
    done = subprocess.run(
        [sys.executable, "-c", TZ_CHECK, redis_server.url],
        cwd=REPO,
        env={**os.environ, "TZ": tz},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["utc_offset_s"] >= 7 * 3600, "TZ did not take effect in the child"
    assert report["state"] == "open"
    assert 25_000 < report["remaining_ms"] <= 30_000


def test_the_exported_state_of_an_open_breaker_turns_half_open_when_its_reset_timeout_is_over(
    redis_server: RedisServer,
) -> None:
    # What /metrics and the status page show: open while calls are refused, then half-open (the
    # next call probes) although no call came to move the stored word.
    from shared.exposition import breaker_states

    settings = breaker_settings(redis_server, breaker_fail_max=1, breaker_reset_timeout_seconds=0.5)
    breaker = make_breaker(settings)
    with pytest.raises(OriginError):
        breaker.call(failing)
    assert list(breaker_states([breaker])) == [(ORIGIN, BreakerState.OPEN)]
    wait_until(lambda: breaker.remaining_open_ms() == 0, 5, "the reset timeout to run out")
    assert stored_state(redis_server) == b"open"
    assert list(breaker_states([breaker])) == [(ORIGIN, BreakerState.HALF_OPEN)]
    assert breaker.call(lambda: 7) == 7  # the probe
    assert list(breaker_states([breaker])) == [(ORIGIN, BreakerState.CLOSED)]
