"""Warm-ups against a real redis-server: the WARM script takes the same lease and queued marker as
a read that wins, and leaves fresh, queued, running and cooling keys alone."""

from __future__ import annotations

from contextlib import nullcontext

from shared.admission import Admission
from shared.answers import WarmIncomplete
from shared.coldwait import ColdWaitHub
from shared.degraded import RedisHealth
from shared.keys import EntryKeys
from shared.namespaces import Namespace, build_namespace
from shared.origin_slots import OriginSlots
from shared.readpath import NoNearCache, ReadPath, SendRefresh
from shared.refresher import Refresher
from shared.settings import Settings
from shared.store import CacheStore, new_token
from shared.tasks import RefreshRequest, queued_marker_ttl_seconds, refresh_expiry_seconds, refresh_priority
from shared.xfetch import Decision
from tests.readpaths import store_fresh


def _read_path(settings: Settings, store: CacheStore, send: SendRefresh) -> ReadPath:
    """A web process's read path whose queue is `send` (a warm-up sends one task at a time)."""
    waiter = ColdWaitHub(lambda: store.redis, settings.max_cold_waiters)
    return ReadPath(
        settings,
        store,
        send_refresh=send,
        open_batch=lambda: nullcontext(send),
        waiter=waiter,
        near_cache=NoNearCache(),
        health=RedisHealth(store.redis.ping),
        admission=Admission(None),
    )


def test_a_warm_up_takes_the_lease_and_marker_of_a_cold_key_as_a_winning_read_would(
    store: CacheStore, ns: Namespace
) -> None:
    token = new_token()
    states, now = store.warm(ns, {"cold": token})
    assert states == {"cold": "won"} and now > 0
    k = EntryKeys.of(ns.name, "cold")
    assert store.redis.get(k.lease).decode() == token and store.redis.get(k.queued).decode() == token
    # A read now finds the warm-up's refresh queued and enqueues nothing of its own.
    r = store.read(ns, "cold", new_token())
    assert r.decision is Decision.MISS and not r.won_lease and r.lease_state == "queued"
    # The warm task claims the lease like any other refresh.
    assert store.claim(ns, "cold", token) is not None


def test_a_warm_up_leaves_fresh_queued_running_and_cooling_keys_alone(store: CacheStore, ns: Namespace) -> None:
    store_fresh(store, ns, "fresh")
    queued = store.read(ns, "queued", new_token())
    assert queued.won_lease
    running = new_token()
    assert store.take_lease(ns, "running", running)
    assert store.claim(ns, "running", running) is not None
    cooling = new_token()
    assert store.take_lease(ns, "cooling", cooling)
    cooling_run = store.claim(ns, "cooling", cooling)
    assert cooling_run is not None
    store.record_failure(ns, "cooling", cooling_run)
    # A stale value is not fresh: it is warmed.
    store_fresh(store, ns, "stale")
    assert store.soft_purge(ns, "stale")

    keys = ["fresh", "queued", "running", "cooling", "stale"]
    leases_before = {key: store.redis.get(EntryKeys.of(ns.name, key).lease) for key in keys[:4]}
    states, _ = store.warm(ns, {key: new_token() for key in keys})
    assert states == {"fresh": "fresh", "queued": "queued", "running": "held", "cooling": "cooldown", "stale": "won"}
    assert {key: store.redis.get(EntryKeys.of(ns.name, key).lease) for key in keys[:4]} == leases_before


def test_a_warm_up_counts_each_distinct_key_once_and_hands_winners_to_the_queue(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    sent: list[RefreshRequest] = []
    read_path = _read_path(settings, store, sent.append)
    store_fresh(store, ns, "f")
    keys = [f"w{i}" for i in range(2500)] + ["f", "w0", "w1"]
    result = read_path.warm(ns, keys)
    assert (result.enqueued, result.already_fresh, result.in_flight, result.cooling_down) == (2500, 1, 0, 0)
    assert sorted(r.key for r in sent) == sorted(f"w{i}" for i in range(2500))
    assert {r.reason for r in sent} == {"warm"}
    # Each task carries the token its key's lease holds.
    for r in sent[::250]:
        assert store.lease_holder(ns, r.key) == r.token
    again = read_path.warm(ns, keys)
    assert (again.enqueued, again.in_flight) == (0, 2500) and len(sent) == 2500


def test_a_refused_task_gives_back_the_leases_of_every_key_not_yet_enqueued(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    sent: list[RefreshRequest] = []

    def queue_that_fails_after_three(request: RefreshRequest) -> None:
        if len(sent) == 3:
            raise ConnectionError("broker down")
        sent.append(request)

    read_path = _read_path(settings, store, queue_that_fails_after_three)
    keys = [f"k{i}" for i in range(10)]
    try:
        read_path.warm(ns, keys)
    except WarmIncomplete as exc:
        assert exc.enqueued == 3
    else:
        raise AssertionError("the warm-up did not report the refused task")
    enqueued = {r.key for r in sent}
    for key in keys:
        k = EntryKeys.of(ns.name, key)
        held = store.redis.exists(k.lease) + store.redis.exists(k.queued)
        assert held == (2 if key in enqueued else 0), key


def test_a_warm_up_or_cold_start_queue_wait_does_not_count_as_refresh_duration(
    settings: Settings, store: CacheStore
) -> None:
    # d (XFetch's refresh duration) is what the next early refresh will take, queue included; a
    # warm-up's or a cold start's backlog says nothing about the key, and counting it would make
    # the value refresh early by about that much.
    ns = build_namespace("t", {"origin": "tests.origins:compute"}, settings)
    refresher = Refresher(settings, {ns.name: ns}, store, slots=lambda name: OriginSlots(store.redis, name))
    waited_ms = 30_000
    d: dict[str, float] = {}
    for reason in ("warm", "miss", "early"):
        key = f"queued-long-{reason}"
        token = new_token()
        states, now = store.warm(ns, {key: token})
        assert states[key] == "won"
        report = refresher.run(RefreshRequest(ns.name, key, token, reason, now - waited_ms))
        assert report.outcome == "written"
        d[reason] = float(store.redis.hget(EntryKeys.of(ns.name, key).entry, "d"))
    assert d["early"] >= waited_ms
    assert d["warm"] < waited_ms / 10 and d["miss"] < waited_ms / 10, d


def test_refresh_tasks_wait_in_the_queue_as_long_as_their_marker_lives(settings: Settings) -> None:
    # Whatever the reason (the expiry takes none): a refresh that waited past its lease is still
    # worth its one call.
    assert refresh_expiry_seconds(settings) == queued_marker_ttl_seconds(settings) >= 60
    assert refresh_priority("warm", settings) > refresh_priority("miss", settings)  # Redis: lower first
