"""Admissions that arrive while another's round trip runs share one message (shared/admitbatch.py).

A gate in the single-key admission holds the first caller's round trip, so which callers queue
behind it is decided by the test, not by timing; everything else is the real scripts on a real
Redis, and the message is taken off the queue by kombu as a worker's consumer takes it.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from celery import Celery

from shared.admitbatch import Admission
from shared.protocol import AdmitState
from shared.queuebound import QueueBound, member
from shared.settings import Settings
from shared.store import CacheStore, make_redis
from shared.taskmessage import RefreshMessages
from shared.tasks import REFRESH_MANY_TASK, REFRESH_TASK, RefreshRequest, broker_lists, celery_config, requests_of
from tests.stack import RedisServer, wait_until


class Gated:
    """A QueueBound whose single-key admission waits for `release` (the batcher's first caller)."""

    def __init__(self, settings: Settings, max_batch: int = 8) -> None:
        self.store = CacheStore(make_redis(settings), settings)
        self.queue = QueueBound(self.store, settings)
        messages = RefreshMessages(settings)
        self.queue.send_with_admission(messages.build, messages.build_many, max_batch)
        assert self.queue.batcher is not None
        self.batcher = self.queue.batcher
        self.release = threading.Event()
        alone = self.batcher._admit_one

        def gated(item: Admission) -> tuple[AdmitState, str]:
            self.release.wait(10)
            return alone(item)

        self.batcher._admit_one = gated
        self.answers: dict[str, tuple[AdmitState, str] | BaseException] = {}

    def admit(self, key: str, reason: str = "miss", limit: int = 10_000) -> threading.Thread:
        request = RefreshRequest("demo", key, f"tok-{key}", reason, 1_796_000_000_000)

        def run() -> None:
            try:
                self.answers[key] = self.batcher.admit(Admission(member("demo", key), limit, request))
            except BaseException as exc:  # noqa: BLE001 - recorded for the test to see
                self.answers[key] = exc

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def queued_behind_first(self, keys: list[str], **kwargs: Any) -> list[threading.Thread]:
        """The first key's admission held at the gate, the others waiting behind it; then released."""
        threads = [self.admit(keys[0], **kwargs)]
        wait_until(lambda: self.batcher.waiting() == 1, what="the first admission under way")
        threads += [self.admit(key, **kwargs) for key in keys[1:]]
        wait_until(lambda: self.batcher.waiting() == len(keys), what="the others behind it")
        self.release.set()
        for thread in threads:
            thread.join(10)
        return threads


def _messages(client: Any, settings: Settings) -> list[dict[str, Any]]:
    keys = RefreshMessages(settings).keys
    found = []
    for name in broker_lists(keys):
        found += [json.loads(raw) for raw in reversed(client.lrange(name, 0, -1))]
    return found


@pytest.fixture
def broker_settings(redis_server: RedisServer) -> Settings:
    redis_server.client().flushall()
    return Settings(redis_url=redis_server.url, celery_broker_url=redis_server.url)


def test_admissions_behind_a_round_trip_go_out_as_one_message(
    redis_server: RedisServer, broker_settings: Settings
) -> None:
    gated = Gated(broker_settings)
    keys = ["first", "k/ü 1", "b", "c"]
    gated.queued_behind_first(keys)

    assert all(gated.answers[key] == (AdmitState.ADMITTED, f"tok-{key}") for key in keys), gated.answers
    messages = _messages(redis_server.client(), broker_settings)
    assert [m["headers"]["task"] for m in messages] == [REFRESH_TASK, REFRESH_MANY_TASK]
    body = json.loads(messages[1]["body"])  # JSON text, no base64 (ManyMessage)
    carried = requests_of(REFRESH_MANY_TASK, body[1])
    assert [(r.key, r.token, r.reason) for r in carried] == [(k, f"tok-{k}", "miss") for k in keys[1:]]
    # Flower shows the keys the message carries, as a single refresh shows its own.
    shown = messages[1]["headers"]["argsrepr"]
    assert shown == messages[1]["properties"]["argsrepr"] and shown.startswith("demo/")
    assert json.loads(shown.removeprefix("demo/")) == keys[1:]
    # Each key is its own entry in the queue's registry, as a message of its own would be.
    client = redis_server.client()
    assert client.zcard(gated.queue.keys.queue_waiting) == 4
    assert gated.batcher.batches == 1 and gated.batcher.batched == 3


def test_each_key_of_a_batch_is_bounded_as_alone(redis_server: RedisServer, broker_settings: Settings) -> None:
    gated = Gated(broker_settings)
    # "waiting" already has a message in the queue: it coalesces into it, and sends nothing.
    assert gated.queue.admit("demo", "waiting", "tok-old").state is AdmitState.ADMITTED
    gated.queued_behind_first(["first", "waiting", "fresh"])
    gated.release.clear()
    # An early refresh under a bound the queue already meets is refused; a miss is not.
    gated.queued_behind_first(["first-2", "early"], reason="early", limit=2)

    assert gated.answers["waiting"] == (AdmitState.QUEUED, "tok-old")
    assert gated.answers["fresh"] == (AdmitState.ADMITTED, "tok-fresh")
    assert gated.answers["early"] == (AdmitState.FULL, "")
    many = [m for m in _messages(redis_server.client(), broker_settings) if m["headers"]["task"] == REFRESH_MANY_TASK]
    assert [[r.key for r in requests_of(REFRESH_MANY_TASK, json.loads(m["body"])[1])] for m in many] == [["fresh"]]


def test_a_worker_takes_the_shared_message(redis_server: RedisServer, broker_settings: Settings) -> None:
    gated = Gated(broker_settings)
    gated.queued_behind_first(["first", "x", "y"], reason="stale")

    celery = Celery("herdless")
    celery.conf.update(celery_config(broker_settings))
    queue = gated.queue.keys.queue
    taken = []
    with celery.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue, no_ack=True)
        for _ in range(2):
            message = simple.get(timeout=5)
            taken.append((message.headers["task"], message.decode()))
        simple.close()
    by_task = dict(taken)
    assert by_task[REFRESH_TASK][1]["key"] == "first"
    assert [r.key for r in requests_of(REFRESH_MANY_TASK, by_task[REFRESH_MANY_TASK][1])] == ["x", "y"]


def test_a_batch_survives_a_script_flush_and_a_lost_round_trip_fails_all_of_it(
    redis_server: RedisServer, broker_settings: Settings
) -> None:
    gated = Gated(broker_settings)
    redis_server.client().script_flush()  # as after a Redis restart: NOSCRIPT, loaded, run once
    gated.queued_behind_first(["first", "p", "q"])
    assert gated.answers["p"] == (AdmitState.ADMITTED, "tok-p")
    assert redis_server.client().zscore(gated.queue.keys.queue_waiting, member("demo", "q")) is not None

    gated.release.clear()
    gated.batcher._client = make_redis(Settings(redis_url="redis://127.0.0.1:9/0"))  # nothing listens
    gated.queued_behind_first(["first-2", "r", "s"])
    assert gated.answers["first-2"] == (AdmitState.ADMITTED, "tok-first-2")
    assert all(isinstance(gated.answers[key], Exception) for key in ("r", "s")), gated.answers


class Interrupted(BaseException):
    """What gevent raises into a greenlet it kills (GreenletExit is a BaseException too)."""


class KilledWhileWaiting:
    """An Admission's `done` whose wait is interrupted, as a killed greenlet's would be."""

    def __init__(self, real: threading.Event) -> None:
        self.real = real

    def wait(self, timeout: float | None = None) -> bool:
        self.real.wait(timeout)
        raise Interrupted

    def set(self) -> None:
        self.real.set()


def test_a_caller_killed_while_it_waits_leaves_no_batch_waiting_on_it(
    redis_server: RedisServer, broker_settings: Settings
) -> None:
    gated = Gated(broker_settings, max_batch=2)
    first = gated.admit("first")
    wait_until(lambda: gated.batcher.waiting() == 1, what="the first admission under way")
    # The next caller in line is killed once it is told to lead; the one behind it must still run.
    doomed = Admission(member("demo", "doomed"), 10_000, RefreshRequest("demo", "doomed", "tok-doomed", "miss", 1))
    doomed.done = KilledWhileWaiting(doomed.done)  # type: ignore[assignment]
    raised: list[BaseException] = []

    def killed() -> None:
        try:
            gated.batcher.admit(doomed)
        except Interrupted as exc:
            raised.append(exc)

    victim = threading.Thread(target=killed)
    victim.start()
    wait_until(lambda: gated.batcher.waiting() == 2, what="the doomed caller behind it")
    last = gated.admit("last")
    wait_until(lambda: gated.batcher.waiting() == 3, what="the last caller behind both")
    gated.release.set()
    for thread in (first, victim, last):
        thread.join(10)
    assert raised and not last.is_alive()
    assert gated.answers["last"] == (AdmitState.ADMITTED, "tok-last")
    assert gated.batcher.waiting() == 0
