"""Batch reads against a real redis-server: warm keys from memory with no Redis round trip, the
rest in one pipelined round trip, each miss enqueued once and waited for together."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pytest

from shared.admission import Admission
from shared.answers import Refused, Served
from shared.batchread import read_batch
from shared.coldwait import ColdWaitHub
from shared.degraded import RedisHealth
from shared.namespaces import Namespace
from shared.nearcache import NearCache
from shared.protocol import AnswerOutcome, FailureCode, Refusal
from shared.readpath import ReadPath
from shared.settings import Settings
from shared.store import CacheStore, Fence, make_redis, new_token, pubsub_client
from shared.tasks import RefreshRequest
from tests.stack import wait_until


@contextmanager
def _commands_naming(store: CacheStore, names: list[str]) -> Iterator[list[str]]:
    """The commands Redis runs inside the block that name any of `names` (MONITOR: other tests'
    stray clients on the same server do not count)."""
    seen: list[str] = []
    marker = f"end-of-block-{new_token()}"
    monitor_client = make_redis(store.settings)
    with monitor_client.monitor() as monitor:
        started = threading.Event()

        def listen() -> None:
            for command in monitor.listen():
                started.set()
                text = command["command"]
                if marker in text:
                    return
                if any(name in text for name in names):
                    seen.append(text)

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        while not started.is_set():  # MONITOR is live once it reports our own PING
            store.redis.ping()
            started.wait(0.05)
        yield seen
        store.redis.echo(marker)
        listener.join(10)
        assert not listener.is_alive(), "MONITOR never saw the end of the block"


def _write(store: CacheStore, ns: Namespace, key: str, value: bytes) -> None:
    token = new_token()
    store.take_lease(ns, key, token)
    run = store.claim(ns, key, token)
    assert run is not None
    now = store.now_ms()
    assert store.fenced_write(ns, key, Fence(run, now, now), value=value, content_type="application/json").written


class Engine:
    """A web process's read path (near-cache on, hub subscribed) whose queue is a list; `serve`
    plays the worker for the refreshes sent."""

    def __init__(self, settings: Settings, store: CacheStore, max_waiters: int = 10_000) -> None:
        self.store = store
        self.sent: list[RefreshRequest] = []
        self.lock = threading.Lock()
        self.near = NearCache[object](1 << 24, margin_ms=0)
        self.hub = ColdWaitHub(lambda: pubsub_client(settings), max_waiters, self.near)
        self.hub.start()
        assert self.hub.connected.wait(10), "the hub did not subscribe"
        self.path = ReadPath(
            settings,
            store,
            send_refresh=self._send,
            open_batch=lambda: nullcontext(self._send),
            waiter=self.hub,
            near_cache=self.near,  # type: ignore[arg-type]
            health=RedisHealth(store.redis.ping),
            admission=Admission(None),
        )

    def _send(self, request: RefreshRequest) -> None:
        with self.lock:
            self.sent.append(request)

    def serve(self, ns: Namespace, request: RefreshRequest, value: bytes | None = None) -> None:
        """Run the refresh like a worker: claim, write (publishes "ready"), acknowledge."""
        run = self.store.claim(ns, request.key, request.token)
        assert run is not None
        now = self.store.now_ms()
        body = value if value is not None else b'{"key": "%s"}' % request.key.encode()
        self.store.fenced_write(ns, request.key, Fence(run, now, now), value=body, content_type="application/json")
        self.store.finish(ns, request.key, request.token)

    def stop(self) -> None:
        self.hub.stop()


@pytest.fixture
def engine(settings: Settings, store: CacheStore) -> Iterator[Engine]:
    e = Engine(settings, store)
    yield e
    e.stop()


def test_a_batch_of_warm_keys_is_answered_from_memory_with_no_redis_round_trip(
    engine: Engine, store: CacheStore, ns: Namespace
) -> None:
    keys = [f"k{i}" for i in range(100)]
    for key in keys:
        _write(store, ns, key, b'{"v": 1}')
    first = read_batch(engine.path, ns, keys)  # one pipelined round trip fills the near-cache
    assert all(isinstance(a, Served) and a.outcome is AnswerOutcome.HIT for a in first.values())
    # The writes' own "ready" messages may still be on their way and drop what the read kept:
    # read until every key is held, then count.
    wait_until(
        lambda: all(a.from_near_cache for a in read_batch(engine.path, ns, keys).values()),  # type: ignore[union-attr]
        10,
        "every key to be held in memory",
    )
    with _commands_naming(store, [store.keys.entry(ns.name, key).entry for key in keys]) as commands:
        second = read_batch(engine.path, ns, keys)
    assert commands == [], "a warm batch read reached Redis"
    assert list(second) == keys
    assert all(isinstance(a, Served) and a.from_near_cache for a in second.values())


def test_the_keys_of_a_batch_that_miss_memory_cost_one_pipelined_read(
    engine: Engine, store: CacheStore, ns: Namespace
) -> None:
    keys = [f"k{i}" for i in range(50)]
    for key in keys:
        _write(store, ns, key, b"{}")
    pipelines = 0
    real_pipeline = store.redis.pipeline

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal pipelines
        pipelines += 1
        return real_pipeline(*args, **kwargs)

    store.redis.pipeline = counting  # type: ignore[method-assign]
    evalsha = store.redis.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    answers = read_batch(engine.path, ns, keys)
    assert all(isinstance(a, Served) and a.outcome is AnswerOutcome.HIT for a in answers.values())
    assert pipelines == 1
    assert store.redis.info("commandstats")["cmdstat_evalsha"]["calls"] - evalsha == 50  # one READ per key


def test_each_cold_key_of_a_batch_is_enqueued_once_and_all_are_answered_together(
    settings: Settings, ns: Namespace
) -> None:
    # Serving 100 refreshes one by one takes a while on a loaded machine: wait longer than that.
    patient = settings.model_copy(update={"cold_wait_timeout_seconds": 60.0})
    engine = Engine(patient, CacheStore(make_redis(patient), patient))
    try:
        _all_cold_keys_answered_together(engine, ns)
    finally:
        engine.stop()


def _all_cold_keys_answered_together(engine: Engine, ns: Namespace) -> None:
    keys = [f"cold{i}" for i in range(100)]
    result: dict[str, object] = {}
    other: dict[str, object] = {}
    reader = threading.Thread(target=lambda: result.update(read_batch(engine.path, ns, keys + keys[:10])))
    reader.start()
    wait_until(lambda: len(engine.sent) == 100, 10, "the batch to enqueue its misses")
    wait_until(lambda: all(engine.hub.waiting_on(ns.name, k) == 1 for k in keys), 10, "the batch to wait")
    # A second batch of the same keys meanwhile enqueues nothing more: the refreshes are queued.
    second = threading.Thread(target=lambda: other.update(read_batch(engine.path, ns, keys[::-1])))
    second.start()
    wait_until(lambda: all(engine.hub.waiting_on(ns.name, k) == 2 for k in keys), 10, "the second batch to wait")
    for request in list(engine.sent):
        engine.serve(ns, request)
    reader.join(10)
    second.join(10)
    assert not reader.is_alive() and not second.is_alive()
    assert sorted(r.key for r in engine.sent) == sorted(keys)  # one enqueue per key, duplicates once
    assert list(result) == keys and list(other) == keys[::-1]
    for key in keys:
        assert isinstance(other[key], Served)
        answer = result[key]
        assert isinstance(answer, Served) and answer.outcome is AnswerOutcome.MISS
        assert answer.result.value == b'{"key": "%s"}' % key.encode()


def test_a_key_that_does_not_arrive_in_time_gets_its_own_503_and_the_others_their_values(
    settings: Settings, redis_server: object, ns: Namespace
) -> None:
    quick = settings.model_copy(update={"cold_wait_timeout_seconds": 1.0})
    store = CacheStore(make_redis(quick), quick)
    engine = Engine(quick, store)
    try:
        keys = ["a", "b", "c"]
        result: dict[str, object] = {}
        reader = threading.Thread(target=lambda: result.update(read_batch(engine.path, ns, keys)))
        reader.start()
        wait_until(lambda: len(engine.sent) == 3, 10, "the batch to enqueue its misses")
        for request in engine.sent:
            if request.key != "b":
                engine.serve(ns, request)
        reader.join(10)
        assert isinstance(result["a"], Served) and isinstance(result["c"], Served)
        late = result["b"]
        assert isinstance(late, Refused) and late.status == 503 and late.error == Refusal.COLD_WAIT_TIMEOUT
    finally:
        engine.stop()


def test_a_key_whose_refresh_fails_gets_its_own_502(engine: Engine, store: CacheStore, ns: Namespace) -> None:
    result: dict[str, object] = {}
    reader = threading.Thread(target=lambda: result.update(read_batch(engine.path, ns, ["good", "bad"])))
    reader.start()
    wait_until(lambda: len(engine.sent) == 2, 10, "the batch to enqueue its misses")
    for request in engine.sent:
        if request.key == "good":
            engine.serve(ns, request)
        else:
            run = store.claim(ns, request.key, request.token)
            assert run is not None
            store.record_failure(ns, request.key, run, reason=FailureCode.ORIGIN_TIMEOUT)
    reader.join(10)
    assert isinstance(result["good"], Served)
    bad = result["bad"]
    assert isinstance(bad, Refused) and bad.status == 502 and bad.error == FailureCode.ORIGIN_TIMEOUT


def test_a_batch_serves_stale_values_at_once_and_enqueues_their_refresh(
    engine: Engine, store: CacheStore, ns: Namespace, settings: Settings
) -> None:
    _write(store, ns, "old", b'"old"')
    # Make the value stale: its fresh life is over, its stale window is not.
    store.redis.hset(store.keys.entry(ns.name, "old").entry, "soft", store.now_ms() - 1)
    answers = read_batch(engine.path, ns, ["old"])
    answer = answers["old"]
    assert isinstance(answer, Served) and answer.outcome is AnswerOutcome.STALE
    assert [(r.key, r.reason) for r in engine.sent] == [("old", "stale")]


def test_a_batch_entry_carries_text_bodies_as_text_and_others_as_base64(ns: Namespace) -> None:
    from shared.answers import Unstored
    from web.batch import entry_of

    text = entry_of(ns, Unstored("héllo".encode(), "text/plain; charset=utf-8"))
    assert text["body"] == "héllo" and text["body_encoding"] == "text"
    binary = entry_of(ns, Unstored(b"\xff\x00", "application/octet-stream"))
    assert binary["body_encoding"] == "base64" and binary["body"] == "/wA="
    not_utf8 = entry_of(ns, Unstored(b"\xff", "application/json"))
    assert not_utf8["body_encoding"] == "base64"
    refused = entry_of(ns, Refused(502, "origin_timeout", "late", 2.5))
    assert refused == {
        "status": 502,
        "x_cache": "ERROR",
        "error": "origin_timeout",
        "detail": "late",
        "retry_after": 3,
    }


def test_a_batch_counts_as_one_cold_waiter_however_many_keys_it_waits_for(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    engine = Engine(settings, store, max_waiters=2)
    try:
        result: dict[str, object] = {}
        keys = [f"w{i}" for i in range(5)]
        reader = threading.Thread(target=lambda: result.update(read_batch(engine.path, ns, keys)))
        reader.start()
        wait_until(lambda: len(engine.sent) == 5 and engine.hub.active == 1, 10, "the batch to wait as one")
        for request in engine.sent:
            engine.serve(ns, request)
        reader.join(10)
        assert all(isinstance(result[key], Served) for key in keys), result
    finally:
        engine.stop()
