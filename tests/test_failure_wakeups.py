"""Every failure path of a refresh wakes the key's cold waiters in the step that records it.

The wake-up is RECORD_FAILURE's own PUBLISH, as a write's is FENCED_WRITE's: no failure path
can record a cooldown and forget the waiters. The engine tests give the waiting hub a safety-net
re-read slice (60 s) longer than the cold wait (30 s): without the publish a waiter would sleep
through the refresh's failure and answer 503 cold_wait_timeout, not the 502 of the failure.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import pytest
import redis

from shared.admission import Admission
from shared.answers import Answer, Refused
from shared.breaker import breaker_fields_key, breaker_state_key
from shared.coldwait import ColdWaitHub
from shared.degraded import RedisHealth
from shared.keys import DEFAULT_KEYSPACE
from shared.namespaces import Namespace, build_namespace
from shared.origin_slots import OriginSlots
from shared.protocol import FailureCode, LeaseState, ReadyStatus, RefreshOutcome
from shared.readpath import NoNearCache, ReadPath
from shared.refresher import Refresher
from shared.settings import Settings
from shared.store import CacheStore, make_redis, new_token, pubsub_client
from tests.stack import wait_until

COLD_WAIT_SECONDS = 30.0
SAFETY_NET_SLICE = 60.0
PROMPTLY = 10.0  # well under COLD_WAIT_SECONDS, generous for a loaded machine


@pytest.fixture
def ready_messages(store: CacheStore) -> Iterator[Callable[[], dict[str, Any]]]:
    """The next message on the ready channel, as JSON (fails after 5 s without one)."""
    pubsub = store.redis.pubsub()
    pubsub.subscribe(DEFAULT_KEYSPACE.ready_channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"

    def next_message() -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=max(0.01, deadline - time.monotonic()))
            if message is not None and message["type"] == "message":
                return dict(json.loads(message["data"]))
        raise AssertionError("nothing was published on the ready channel")

    yield next_message
    pubsub.close()


@pytest.mark.parametrize("code", list(FailureCode))
def test_recording_a_failure_publishes_the_error_that_wakes_cold_waiters(
    store: CacheStore, ns: Namespace, ready_messages: Callable[[], dict[str, Any]], code: FailureCode
) -> None:
    token = new_token()
    assert store.take_lease(ns, "k", token)
    run_token = store.claim(ns, "k", token)
    assert run_token is not None

    store.record_failure(ns, "k", run_token, reason=code, origin_called=code is not FailureCode.BREAKER_OPEN)

    assert ready_messages() == {"ns": ns.name, "key": "k", "status": ReadyStatus.ERROR}
    assert store.inspect(ns, "k").cooldown_reason is code


def test_a_failure_recorded_after_the_lease_was_lost_still_wakes_the_waiters(
    store: CacheStore, ns: Namespace, ready_messages: Callable[[], dict[str, Any]]
) -> None:
    token = new_token()
    assert store.take_lease(ns, "k", token)
    run_token = store.claim(ns, "k", token)
    assert run_token is not None
    store.purge(ns, "k")  # the run's lease is gone, and a read takes the key over
    assert store.take_lease(ns, "k", new_token())

    store.record_failure(ns, "k", run_token)

    assert ready_messages()["status"] == ReadyStatus.ERROR
    assert store.inspect(ns, "k").lease is LeaseState.HELD  # the failure set no cooldown


# -- through the engine: a cold read answers the failure's 502 as soon as it is recorded ------


class ColdKey:
    """One engine serving a cold read in a thread (its hub waiting for the publish) and running
    the refresh that read enqueued in the test's thread, as a worker would."""

    def __init__(self, settings: Settings, store: CacheStore, ns: Namespace, *, slots: bool = False) -> None:
        self.settings, self.store, self.ns = settings, store, ns
        self.sent: queue.Queue[Any] = queue.Queue()
        self.hub = ColdWaitHub(lambda: pubsub_client(settings), 100, connected_slice=SAFETY_NET_SLICE)
        self.hub.start()
        assert self.hub.connected.wait(10), "the hub did not subscribe"
        self.read_path = ReadPath(
            settings,
            store,
            send_refresh=self.sent.put,
            open_batch=lambda: nullcontext(self.sent.put),
            waiter=self.hub,
            near_cache=NoNearCache(),
            health=RedisHealth(store.redis.ping),
            admission=Admission(None),
        )
        self.refresher = Refresher(settings, {ns.name: ns}, store, slots=lambda name: OriginSlots(store.redis, name))
        self.answer: Answer | None = None

    def fail_the_refresh(self, key: str) -> tuple[Answer | None, float, RefreshOutcome]:
        """Read `key` cold, run its refresh, and return the read's answer, how long after the
        refresh the read took to answer, and the refresh's outcome."""
        reader = threading.Thread(target=self._read, args=(key,), daemon=True)
        reader.start()
        request = self.sent.get(timeout=10)
        wait_until(lambda: self.hub.waiting_on(self.ns.name, key) == 1, 10, "the cold read to wait")
        report = self.refresher.run(request)
        refreshed = time.monotonic()
        reader.join(COLD_WAIT_SECONDS + 5)
        return self.answer, time.monotonic() - refreshed, RefreshOutcome(report.outcome)

    def _read(self, key: str) -> None:
        self.answer = self.read_path.read(self.ns, key)

    def close(self) -> None:
        self.hub.stop()


@pytest.fixture
def cold_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"cold_wait_timeout_seconds": COLD_WAIT_SECONDS})


@pytest.fixture
def cold_key(cold_settings: Settings) -> Iterator[Callable[..., ColdKey]]:
    made: list[ColdKey] = []

    def make(ns: Namespace, *, slots: bool = False) -> ColdKey:
        made.append(ColdKey(cold_settings, CacheStore(make_redis(cold_settings), cold_settings), ns, slots=slots))
        return made[-1]

    yield make
    for one in made:
        one.close()


def _typed(settings: Settings, name: str, **options: Any) -> Namespace:
    return build_namespace(name, {"origin": "tests.origins:typed", **options}, settings)


def _assert_woken_by_the_failure(
    outcome: tuple[Answer | None, float, RefreshOutcome], expected: RefreshOutcome, code: FailureCode
) -> None:
    answer, answered_after, refresh = outcome
    assert refresh is expected
    assert isinstance(answer, Refused), answer
    assert (answer.status, answer.error) == (502, code)
    assert answered_after < PROMPTLY


def test_a_cold_read_answers_an_origin_error_as_soon_as_it_is_recorded(
    cold_settings: Settings, cold_key: Callable[..., ColdKey]
) -> None:
    run = cold_key(_typed(cold_settings, "boom"))
    outcome = run.fail_the_refresh("boom-1")
    _assert_woken_by_the_failure(outcome, RefreshOutcome.ORIGIN_ERROR, FailureCode.ORIGIN_ERROR)


def test_a_cold_read_answers_an_origin_timeout_as_soon_as_it_is_recorded(
    cold_settings: Settings, cold_key: Callable[..., ColdKey]
) -> None:
    run = cold_key(_typed(cold_settings, "slow", origin_timeout_seconds=0.3))
    outcome = run.fail_the_refresh("slow-1")
    _assert_woken_by_the_failure(outcome, RefreshOutcome.ORIGIN_ERROR, FailureCode.ORIGIN_TIMEOUT)


def test_a_cold_read_answers_a_too_large_answer_as_soon_as_it_is_recorded(
    cold_settings: Settings, cold_key: Callable[..., ColdKey]
) -> None:
    run = cold_key(_typed(cold_settings, "big"))
    outcome = run.fail_the_refresh("oversized-1")
    _assert_woken_by_the_failure(outcome, RefreshOutcome.ORIGIN_ERROR, FailureCode.ORIGIN_TOO_LARGE)


def test_a_cold_read_answers_an_unimportable_origin_as_soon_as_it_is_recorded(
    cold_settings: Settings, cold_key: Callable[..., ColdKey]
) -> None:
    ns = build_namespace("gone", {"origin": "tests.no_such_module_here:compute"}, cold_settings)
    outcome = cold_key(ns).fail_the_refresh("k")
    _assert_woken_by_the_failure(outcome, RefreshOutcome.ORIGIN_ERROR, FailureCode.ORIGIN_UNIMPORTABLE)


def test_a_cold_read_answers_an_open_breaker_as_soon_as_it_is_recorded(
    cold_settings: Settings, cold_key: Callable[..., ColdKey]
) -> None:
    ns = _typed(cold_settings, "refused")
    run = cold_key(ns)
    client: redis.Redis = run.store.redis
    client.set(breaker_state_key(ns.origin_name), "open")
    client.hset(breaker_fields_key(ns.origin_name), "opened_at", run.store.now_ms())
    outcome = run.fail_the_refresh("k")
    _assert_woken_by_the_failure(outcome, RefreshOutcome.BREAKER_OPEN, FailureCode.BREAKER_OPEN)


def test_a_cold_read_answers_a_saturated_origin_as_soon_as_it_is_recorded(
    cold_settings: Settings, cold_key: Callable[..., ColdKey]
) -> None:
    ns = _typed(cold_settings, "busy", origin_timeout_seconds=0.2, origin_max_concurrency=1)
    run = cold_key(ns, slots=True)
    # Another refresh holds the origin's only slot past this one's wait for it.
    assert OriginSlots(run.store.redis, ns.origin_name).try_acquire("someone-else", 1, 60_000).acquired
    outcome = run.fail_the_refresh("k")
    _assert_woken_by_the_failure(outcome, RefreshOutcome.SLOT_TIMEOUT, FailureCode.ORIGIN_BUSY)


def test_a_cold_read_whose_refresher_died_answers_within_its_cold_wait(cold_settings: Settings) -> None:
    # The refresh the read enqueued never runs and its lease and marker lapse without a publish
    # (its worker died). The read's re-read finds the key free and takes it over; the grace it
    # gives a publish that may still be on its way ends with its own cold wait, not after it.
    settings = cold_settings.model_copy(update={"cold_wait_timeout_seconds": 1.0})
    store = CacheStore(make_redis(settings), settings)
    ns = _typed(settings, "died")
    sent: queue.Queue[Any] = queue.Queue()
    hub = ColdWaitHub(lambda: pubsub_client(settings), 100, connected_slice=0.2)
    hub.start()
    try:
        assert hub.connected.wait(10), "the hub did not subscribe"
        read_path = ReadPath(
            settings,
            store,
            send_refresh=sent.put,
            open_batch=lambda: nullcontext(sent.put),
            waiter=hub,
            near_cache=NoNearCache(),
            health=RedisHealth(store.redis.ping),
            admission=Admission(None),
        )
        answers: list[Answer] = []
        started = time.monotonic()
        reader = threading.Thread(target=lambda: answers.append(read_path.read(ns, "died-1")), daemon=True)
        reader.start()
        sent.get(timeout=10)
        wait_until(lambda: hub.waiting_on(ns.name, "died-1") == 1, 10, "the cold read to wait")
        k = DEFAULT_KEYSPACE.entry(ns.name, "died-1")
        store.redis.delete(k.lease, k.queued)  # lapsed: its refresher is gone
        reader.join(10)
        took = time.monotonic() - started
        assert isinstance(answers[0], Refused) and answers[0].error == "cold_wait_timeout"
        assert took < 1.0 + 0.8, took  # not the cold wait and then the whole grace on top
    finally:
        hub.stop()
