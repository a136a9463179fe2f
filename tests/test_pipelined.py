"""Scripts sent together in one round trip (shared/pipeline.py) on a real Redis: replies in
order, a script Redis forgot (SCRIPT FLUSH, a restart) loaded and run once, a failed call
handed back as its reply; and the refresh run's two users of it (claim, write)."""

from __future__ import annotations

from shared.namespaces import Namespace
from shared.origin_slots import OriginSlots
from shared.pipeline import ScriptCall, run_pipelined
from shared.protocol import AdmitState, LeaseState, MarkerState, RefreshReason
from shared.queuebound import QueueBound
from shared.refresher import Refresher
from shared.settings import Settings
from shared.store import CacheStore, Fence, new_token
from shared.tasks import RefreshRequest

COUNT = "return redis.call('INCR', KEYS[1])"
FAIL = "return redis.error_reply('no')"


def test_replies_come_in_order_and_a_forgotten_script_runs_exactly_once(store: CacheStore) -> None:
    client = store.redis
    count = client.register_script(COUNT)
    calls = [ScriptCall(count, ["a"], []), ScriptCall(count, ["b"], []), ScriptCall(count, ["a"], [])]
    client.script_flush()  # Redis knows none of them: every call gets NOSCRIPT first
    assert run_pipelined(client, calls) == [1, 1, 2]
    assert run_pipelined(client, calls) == [3, 2, 4]  # loaded now: one round trip
    assert (client.get("a"), client.get("b")) == (b"4", b"2")


def test_a_failing_call_is_its_reply_and_the_others_still_run(store: CacheStore) -> None:
    client = store.redis
    count, fail = client.register_script(COUNT), client.register_script(FAIL)
    replies = run_pipelined(client, [ScriptCall(fail, ["x"], []), ScriptCall(count, ["y"], [])])
    assert isinstance(replies[0], Exception) and replies[1] == 1


def test_a_claim_takes_the_message_off_the_registry_in_its_round_trip(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    queue = QueueBound(store, settings)
    token = new_token()
    assert store.read(ns, "k", token).won_lease
    queue.admit(ns.name, "k", token)
    store.redis.script_flush()
    claimed, departed = store.claim_run(ns, "k", token, before=queue.depart_call(ns.name, "k", token, taken=True))
    assert claimed is not None and claimed.stored is None  # nothing stored yet: nothing to revalidate
    assert departed == 1 and queue.waiting() == 0
    assert store.lease_holder(ns, "k") == claimed.run_token
    # The redelivered copy of the message claims nothing, and says so.
    again, _ = store.claim_run(ns, "k", token)
    assert again is None


def test_a_write_gives_the_origin_slot_back_in_its_round_trip(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    token = new_token()
    assert store.read(ns, "k", token).won_lease
    run_token = store.claim(ns, "k", token)
    assert run_token is not None
    slots = OriginSlots(store.redis, ns.origin_name, store.keys)
    assert slots.acquire(run_token, 1, 10_000, 0)
    fence = Fence(run_token, store.now_ms(), store.now_ms(), slots.release_call(run_token))
    result = store.fenced_write(ns, "k", fence, value=b"v", content_type="text/plain")
    assert result.written and slots.in_flight() == 0


def test_a_claim_tries_the_runs_origin_slot_in_its_round_trip_and_gives_it_back_if_unclaimed(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    slots = OriginSlots(store.redis, ns.origin_name, store.keys)
    token = new_token()
    assert store.read(ns, "k", token).won_lease

    def slot_try(run_token: str) -> ScriptCall:
        return slots.try_acquire_call(run_token, 1, 10_000)

    store.redis.script_flush()
    claimed, _ = store.claim_run(ns, "k", token, then=slot_try, undo_then=slots.give_back_unclaimed)
    assert claimed is not None
    assert slots.took(claimed.run_token, claimed.then, 10_000) and slots.in_flight() == 1
    assert not slots.room_here(1)  # this process's run holds the one slot
    # The slot is full now: a second run's try is refused, and the run falls back to waiting.
    other = new_token()
    refused = run_pipelined(store.redis, [slot_try(other)])[0]
    assert not slots.took(other, refused, 10_000)

    slots.release(claimed.run_token)
    # A redelivered copy claims nothing: the slot its try took goes back at once.
    again, _ = store.claim_run(ns, "k", token, then=slot_try, undo_then=slots.give_back_unclaimed)
    assert again is None and slots.in_flight() == 0 and slots.room_here(1)


def test_the_keys_of_one_acknowledged_message_are_finished_together(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    queue = QueueBound(store, settings)
    refresher = Refresher(settings, {ns.name: ns}, store, slots=lambda name: OriginSlots(store.redis, name, store.keys))
    requests = []
    for key in ("a", "b", "c"):
        token = new_token()
        assert store.read(ns, key, token).won_lease
        assert queue.admit(ns.name, key, token).state is AdmitState.ADMITTED
        requests.append(RefreshRequest(ns.name, key, token, RefreshReason.MISS, store.now_ms()))
    assert queue.waiting() == 3
    refresher.finished_many(requests)
    assert queue.waiting() == 0
    for key in ("a", "b", "c"):
        state = store.inspect(ns, key)
        assert state.lease == LeaseState.FREE and state.queued == MarkerState.NONE, (key, state)
        # The next read of the key may enqueue a refresh again.
        assert store.read(ns, key, new_token()).won_lease
