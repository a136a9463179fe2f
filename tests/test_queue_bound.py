"""The registry of waiting refresh messages (shared/queuebound.py) on a real Redis: one entry per
key, a total bound, and entries of lost messages trimmed only once workers consume."""

from __future__ import annotations

import time

from shared.keys import DEFAULT_KEYSPACE
from shared.namespaces import Namespace, build_namespace
from shared.origin_slots import OriginSlots
from shared.protocol import AdmitState
from shared.queuebound import QueueBound
from shared.refresher import Refresher
from shared.settings import Settings
from shared.store import CacheStore, make_redis, new_token
from shared.tasks import RefreshRequest
from tests.stack import RedisServer


def bound(redis_server: RedisServer, **overrides: object) -> tuple[QueueBound, CacheStore]:
    redis_server.client().flushall()
    settings = Settings(redis_url=redis_server.url, lease_ttl_seconds=1, **overrides)  # type: ignore[arg-type]
    store = CacheStore(make_redis(settings), settings)
    return QueueBound(store, settings), store


def test_a_key_whose_message_waits_is_not_admitted_again_however_long_no_worker_consumes(
    redis_server: RedisServer,
) -> None:
    queue, _ = bound(redis_server, queued_marker_seconds=0.2)
    assert queue.admit("t", "k", "first").state is AdmitState.ADMITTED
    time.sleep(0.5)  # past the marker lifetime: no worker ever said it consumes, so nothing is trimmed
    again = queue.admit("t", "k", "second")
    assert (again.state, again.waiting_token) == (AdmitState.QUEUED, "first")
    assert queue.waiting() == 1


def test_past_max_queued_refreshes_a_new_key_is_refused_and_a_departure_makes_room(redis_server: RedisServer) -> None:
    queue, _ = bound(redis_server, max_queued_refreshes=3)
    assert [queue.admit("t", f"k{i}", f"tok{i}").state for i in range(4)] == [AdmitState.ADMITTED] * 3 + [
        AdmitState.FULL
    ]
    queue.depart("t", "k0", "not-its-token", taken=True)  # another message's token: the entry stays
    assert queue.admit("t", "k3", "tok3").state is AdmitState.FULL
    queue.depart("t", "k0", "tok0", taken=True)
    assert queue.admit("t", "k3", "tok3").state is AdmitState.ADMITTED
    assert queue.waiting() == 3


def test_an_entry_whose_message_was_lost_is_trimmed_once_workers_consumed_for_a_marker_lifetime(
    redis_server: RedisServer,
) -> None:
    queue, _ = bound(redis_server, queued_marker_seconds=0.2, max_queued_refreshes=1)
    assert queue.admit("t", "lost", "tok").state is AdmitState.ADMITTED
    queue.consuming()  # workers consume from now on, and never get the message: the broker lost it
    time.sleep(0.1)
    queue.consuming()
    assert queue.admit("t", "other", "tok2").state is AdmitState.FULL  # not yet a marker lifetime
    time.sleep(0.3)
    queue.consuming()
    assert queue.admit("t", "other", "tok2").state is AdmitState.ADMITTED
    assert redis_server.client().zrange(DEFAULT_KEYSPACE.queue_waiting, 0, -1) == [b"t:other"]


def test_coalescing_hands_the_key_back_to_its_waiting_message_which_can_claim_it(
    redis_server: RedisServer, ns: Namespace
) -> None:
    queue, store = bound(redis_server)
    assert store.read(ns, "k", "first").won_lease
    assert queue.admit(ns.name, "k", "first").state is AdmitState.ADMITTED
    # The marker and lease lapsed while no worker ran; a later read wins the key again.
    k = DEFAULT_KEYSPACE.entry(ns.name, "k")
    store.redis.delete(k.lease, k.queued)
    assert store.read(ns, "k", "second").won_lease
    assert queue.admit_or_give_back(ns, "k", "second") is AdmitState.QUEUED
    assert store.redis.get(k.lease) is None and store.redis.get(k.queued) == b"first"
    assert not store.read(ns, "k", "third").won_lease  # the marker holds reads off again
    assert store.claim(ns, "k", "first") is not None  # the waiting message still runs


def test_an_admission_that_carries_the_message_pushes_it_only_when_admitted(redis_server: RedisServer) -> None:
    queue, store = bound(redis_server, max_queued_refreshes=2)
    broker = store.redis
    push = ("hl:0:list", "message-k")
    assert queue.admit("t", "k", "first", push=push).state is AdmitState.ADMITTED
    assert queue.admit("t", "k", "second", push=("hl:0:list", "again")).state is AdmitState.QUEUED
    assert queue.admit("t", "j", "third", push=("hl:0:list", "message-j")).state is AdmitState.ADMITTED
    assert queue.admit("t", "i", "fourth", push=("hl:0:list", "refused")).state is AdmitState.FULL
    assert broker.lrange("hl:0:list", 0, -1) == [b"message-j", b"message-k"]


def test_a_run_requeued_while_its_worker_stops_leaves_no_entry_once_it_is_acknowledged(
    redis_server: RedisServer,
) -> None:
    # A gevent or threads worker runs the task in the process that later hears of its message:
    # the run takes the entry off the registry, the stop puts it back (the message is going
    # back to the queue), and then the run ends after all and its message is acknowledged.
    _, store = bound(redis_server)
    settings = store.settings
    ns = build_namespace("t", {"origin": "tests.origins:compute"}, settings)
    refresher = Refresher(settings, {ns.name: ns}, store, slots=lambda name: OriginSlots(store.redis, name))
    token = new_token()
    assert store.read(ns, "k", token).won_lease
    assert refresher.queue.admit(ns.name, "k", token).state is AdmitState.ADMITTED
    req = RefreshRequest(ns.name, "k", token, "miss", store.now_ms())
    assert refresher.run(req).outcome == "written"
    refresher.requeued(req)  # worker_shutting_down, while the run was still going
    refresher.finished(req)  # the run ended and its message was acknowledged: it never comes back
    assert refresher.queue.waiting() == 0
    later = new_token()
    assert refresher.queue.admit(ns.name, "k", later).state is AdmitState.ADMITTED
