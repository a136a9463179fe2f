"""CacheStore against a real redis-server: leases, fenced writes, purges, failure cooldowns."""

from __future__ import annotations

import threading

import pytest

from shared.keys import EntryKeys, InvalidKey, decode_key, validate_key
from shared.namespaces import Namespace
from shared.store import CacheStore, Fence, new_token
from shared.xfetch import Decision, may_write, smooth_duration


def _run_lease(store: CacheStore, ns: Namespace, key: str) -> str:
    """Take the key's lease as a refresh run would (won, then claimed); returns the run token."""
    store.redis.delete(EntryKeys.of(ns.name, key).lease, EntryKeys.of(ns.name, key).queued)
    token = new_token()
    assert store.take_lease(ns, key, token)
    run_token = store.claim(ns, key, token)
    assert run_token
    return run_token


def _write(
    store: CacheStore, ns: Namespace, key: str, run_token: str | None, value: bytes, started: int | None = None
) -> bool:
    """A refresh's write; with run_token None it first takes the lease as a fresh run."""
    run_token = run_token or _run_lease(store, ns, key)
    started = store.now_ms() if started is None else started
    return store.fenced_write(
        ns, key, Fence(run_token, started, started), value=value, content_type="text/plain"
    ).written


def test_only_one_of_many_concurrent_readers_wins_the_lease(store: CacheStore, ns: Namespace) -> None:
    barrier = threading.Barrier(50)
    results: list[bool] = []

    def reader() -> None:
        barrier.wait()
        results.append(store.read(ns, "cold", new_token()).won_lease)

    threads = [threading.Thread(target=reader) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1 and len(results) == 50


def test_a_write_older_than_the_stored_value_is_fenced(store: CacheStore, ns: Namespace) -> None:
    t_old = store.now_ms()
    t_new = t_old + 50
    assert _write(store, ns, "k", None, b"new", started=t_new)
    assert not _write(store, ns, "k", None, b"old", started=t_old)
    assert not _write(store, ns, "k", None, b"same-instant", started=t_new)
    r = store.read(ns, "k", new_token())
    assert r.value == b"new" and r.at_ms == t_new


@pytest.mark.parametrize("delta", [-5, 0, 5])
def test_fenced_write_script_agrees_with_the_pure_rule(store: CacheStore, ns: Namespace, delta: int) -> None:
    base = store.now_ms()
    assert _write(store, ns, "f", None, b"first", started=base)
    landed = _write(store, ns, "f", None, b"second", started=base + delta)
    assert landed == may_write(base + delta, base, None)


def test_hard_purge_stops_an_earlier_refresh_from_resurrecting_the_value(store: CacheStore, ns: Namespace) -> None:
    assert _write(store, ns, "p", None, b"v1", started=store.now_ms() - 20)
    run_token = _run_lease(store, ns, "p")
    started_before_purge = store.now_ms() - 1
    assert store.purge(ns, "p")
    assert store.lease_holder(ns, "p") is None
    # The refresh that began before the purge finishes now: it must not land.
    assert not _write(store, ns, "p", run_token, b"stale-resurrection", started=started_before_purge)
    assert store.read(ns, "p", new_token()).decision is Decision.MISS
    # A refresh that starts after the purge lands normally.
    assert _write(store, ns, "p", None, b"v2", started=store.now_ms() + 1)
    assert store.read(ns, "p", new_token()).value == b"v2"


def test_soft_purge_serves_the_old_value_stale_and_takes_the_lease(store: CacheStore, ns: Namespace) -> None:
    assert _write(store, ns, "s", None, b"v1")
    assert store.soft_purge(ns, "s")
    r = store.read(ns, "s", new_token())
    assert r.decision is Decision.STALE and r.value == b"v1" and r.won_lease


def test_a_queued_refresh_blocks_new_ones_even_after_its_lease_ran_out(store: CacheStore, ns: Namespace) -> None:
    queued = new_token()
    assert store.read(ns, "q", queued).won_lease
    store.redis.delete(EntryKeys.of(ns.name, "q").lease)  # the lease ran out; the task still waits
    again = store.read(ns, "q", new_token())
    assert not again.won_lease and again.lease_state == "queued"
    assert not store.take_lease(ns, "q", new_token())
    # The task left the queue expired, unrun: the next read enqueues a fresh refresh.
    store.finish(ns, "q", queued)
    assert store.read(ns, "q", new_token()).won_lease


def test_claiming_turns_only_its_own_queued_marker_into_a_running_one(store: CacheStore, ns: Namespace) -> None:
    mine = new_token()
    assert store.read(ns, "c", mine).won_lease
    assert store.claim(ns, "c", new_token()) is None
    assert store.read(ns, "c", new_token()).lease_state == "queued"
    run_token = store.claim(ns, "c", mine)
    assert run_token and run_token != mine
    assert store.redis.get(EntryKeys.of(ns.name, "c").queued) == f"r:{mine}".encode()
    assert store.read(ns, "c", new_token()).lease_state == "held"
    assert store.lease_holder(ns, "c") == run_token


def test_a_run_keeps_its_marker_until_its_message_is_finished_and_a_dead_run_is_taken_over(
    store: CacheStore, ns: Namespace
) -> None:
    marker = EntryKeys.of(ns.name, "m").queued
    task = new_token()
    assert store.read(ns, "m", task).won_lease
    run_token = store.claim(ns, "m", task)
    assert run_token
    failed_over = store.read(ns, "m", new_token())
    assert not failed_over.won_lease and failed_over.lease_state == "held"
    # The run's host dies: its lease runs out, and with it the running marker's hold.
    store.redis.delete(EntryKeys.of(ns.name, "m").lease)
    taker = new_token()
    assert store.read(ns, "m", taker).won_lease
    assert store.redis.get(marker) == taker.encode()
    # The dead run's message, restored much later, finds the key someone else's.
    assert store.claim(ns, "m", task) is None
    store.finish(ns, "m", task)  # ... and its acknowledgement touches nothing
    assert store.redis.get(marker) == taker.encode()
    assert not store.mark_queued(ns, "m", task)
    assert store.redis.get(marker) == taker.encode()


def test_a_refresh_handed_back_to_the_queue_mid_run_keeps_reads_off_after_its_lease_ran_out(
    store: CacheStore, ns: Namespace
) -> None:
    # Hole 5: a worker stops (SIGTERM) with this refresh running; its message goes back to the
    # queue. Before the fix the run had already cleared the marker, so once its lease ran out
    # a read enqueued a second refresh of the key.
    task = new_token()
    assert store.read(ns, "h", task).won_lease
    assert store.claim(ns, "h", task)
    assert store.mark_queued(ns, "h", task)
    store.redis.delete(EntryKeys.of(ns.name, "h").lease)  # the interrupted run's lease ran out
    r = store.read(ns, "h", new_token())
    assert not r.won_lease and r.lease_state == "queued"
    assert not store.take_lease(ns, "h", new_token())
    # The message runs again: its claim succeeds, and once acknowledged the key is free.
    second = store.claim(ns, "h", task)
    assert second
    assert _write(store, ns, "h", second, b"v")
    assert store.redis.exists(EntryKeys.of(ns.name, "h").queued)
    store.finish(ns, "h", task)
    assert not store.redis.exists(EntryKeys.of(ns.name, "h").queued)
    assert store.take_lease(ns, "h", new_token())


def test_a_failed_run_reads_as_cooling_down_before_its_message_is_acknowledged(
    store: CacheStore, ns: Namespace
) -> None:
    task = new_token()
    assert store.read(ns, "f", task).won_lease
    run_token = store.claim(ns, "f", task)
    assert run_token
    store.record_failure(ns, "f", run_token)
    r = store.read(ns, "f", new_token())
    assert not r.won_lease and r.lease_state == "cooldown"


def test_lease_renew_and_release_only_by_its_owner(store: CacheStore, ns: Namespace) -> None:
    mine = new_token()
    assert store.take_lease(ns, "l", mine)
    assert not store.take_lease(ns, "l", new_token())
    assert not store.renew_lease(ns, "l", new_token())
    store.finish(ns, "l", new_token())
    assert store.lease_holder(ns, "l") == mine
    assert store.renew_lease(ns, "l", mine)
    store.finish(ns, "l", mine)
    assert store.lease_holder(ns, "l") is None


def test_failure_turns_the_lease_into_a_growing_cooldown_and_stretches_the_stale_value(
    store: CacheStore, ns: Namespace
) -> None:
    assert _write(store, ns, "e", None, b"good")
    keys = EntryKeys.of(ns.name, "e")
    ttl_before = store.redis.pttl(keys.entry)
    token = new_token()
    store.soft_purge(ns, "e")
    assert store.read(ns, "e", token).won_lease
    run_token = store.claim(ns, "e", token)
    assert run_token
    first = store.record_failure(ns, "e", run_token)
    r = store.read(ns, "e", new_token())
    assert r.decision is Decision.STALE and r.value == b"good"
    assert r.lease_state == "cooldown" and not r.won_lease
    # Soft-purged just now, so the value may be kept stale-window + stale-if-error from now.
    stretched = store.redis.pttl(keys.entry)
    assert stretched > ttl_before
    assert stretched > (ns.stale_ttl_seconds + ns.stale_if_error_seconds) * 1000 - 1000
    store.redis.delete(keys.lease)
    token2 = new_token()
    assert store.read(ns, "e", token2).won_lease
    run_token2 = store.claim(ns, "e", token2)
    assert run_token2
    second = store.record_failure(ns, "e", run_token2)
    assert second == 2 * first
    assert store.record_failure(ns, "e", run_token2, min_cooldown_ms=25_000) >= 25_000


def test_the_write_script_measures_and_smooths_refresh_duration_like_the_pure_rule(
    store: CacheStore, ns: Namespace
) -> None:
    won_at = store.now_ms() - 200
    first = store.fenced_write(
        ns,
        "d",
        Fence(_run_lease(store, ns, "d"), won_at + 1, won_at),
        value=b"1",
        content_type="text/plain",
    )
    assert first.written and first.delta_ms == first.written_at_ms - won_at
    won_again = store.now_ms() - 50
    second = store.fenced_write(
        ns,
        "d",
        Fence(_run_lease(store, ns, "d"), won_again + 1, won_again),
        value=b"2",
        content_type="text/plain",
    )
    assert second.written
    assert second.delta_ms == smooth_duration(first.delta_ms, 0.0, second.written_at_ms - won_again).delta_ms


def test_negative_entries_are_read_back_as_negative(store: CacheStore, ns: Namespace) -> None:
    run_token = _run_lease(store, ns, "gone")
    started = store.now_ms()
    assert store.fenced_write(
        ns,
        "gone",
        Fence(run_token, started, started),
        value=b"",
        content_type="application/json",
        negative=True,
    ).written
    r = store.read(ns, "gone", new_token())
    assert r.negative and r.decision is Decision.HIT


def test_a_hit_costs_exactly_one_redis_command(store: CacheStore, ns: Namespace, redis_server) -> None:  # noqa: ANN001
    assert _write(store, ns, "hot", None, b"v")
    store.read(ns, "hot", new_token())  # load the script once
    monitor_client = redis_server.client()
    seen: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with monitor_client.monitor() as m:
            ready.set()
            for cmd in m.listen():
                if cmd.get("client_type") != "lua":  # not the commands a script ran inside Redis
                    seen.append(cmd["command"])
                if "STOP-MARK" in cmd["command"]:
                    return

    watcher = threading.Thread(target=watch)
    watcher.start()
    ready.wait(5)
    store.redis.ping()  # MONITOR is live once this shows up
    r = store.read(ns, "hot", new_token())
    store.redis.echo("STOP-MARK")
    watcher.join(10)
    assert r.decision is Decision.HIT
    start = next(i for i, c in enumerate(seen) if c.startswith("PING"))
    between = seen[start + 1 : -1]
    # Other threads of this process may talk to the same Redis meanwhile (a rate flush, the
    # heartbeat of a web app another test built): their commands name keys of their own.
    client_cmds = [c for c in between if "hl:rates:" not in c and "hl:subscribers" not in c and c != "TIME"]
    assert len(client_cmds) == 1 and client_cmds[0].startswith("EVALSHA"), seen


@pytest.mark.parametrize(
    "raw",
    [b"", b"a\x00b", b"line\r\nbreak", b"tab\there", b"\x7f", b"x" * 513, b"\xff\xfe", b"\xc3(", "é".encode() * 257],
)
def test_illegal_keys_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidKey):
        decode_key(raw)


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "@evil.example/x", "?x=1#y", "{ns:k}", "ключ", "a b", "😀" * 128, "x" * 512, "/", ".."]
)
def test_awkward_but_legal_keys_are_accepted(key: str) -> None:
    assert validate_key(key) == key


def test_a_write_needs_the_lease_its_run_claimed(store: CacheStore, ns: Namespace) -> None:
    run_token = _run_lease(store, ns, "w")
    store.redis.delete(EntryKeys.of(ns.name, "w").lease)  # the lease ran out during the call
    result = store.fenced_write(
        ns, "w", Fence(run_token, store.now_ms(), store.now_ms()), value=b"x", content_type="text/plain"
    )
    assert result.status == "lost_lease"
    assert store.read(ns, "w", new_token()).decision is Decision.MISS


def test_a_redelivered_refresh_can_neither_claim_nor_release_the_lease_its_first_run_holds(
    store: CacheStore, ns: Namespace
) -> None:
    # Before the fix the lease held the task token for the whole run, so the redelivered copy
    # (same token, already expired) released it through abandon and a second refresh started.
    token = new_token()
    assert store.read(ns, "r", token).won_lease
    first_run = store.claim(ns, "r", token)
    assert first_run
    assert store.claim(ns, "r", token) is None  # the redelivered copy starts: lost_lease
    store.finish(ns, "r", token)  # ... or expires in the queue
    assert store.lease_holder(ns, "r") == first_run
    r = store.read(ns, "r", new_token())
    assert r.lease_state == "held" and not r.won_lease


def test_a_soft_purge_fences_a_refresh_that_started_before_it(store: CacheStore, ns: Namespace) -> None:
    # Before the fix SOFT_PURGE only moved `soft`: this write landed and was served fresh.
    assert _write(store, ns, "sp", None, b"v1", started=store.now_ms() - 50)
    run_token = _run_lease(store, ns, "sp")
    started = store.now_ms()
    assert store.soft_purge(ns, "sp")
    result = store.fenced_write(ns, "sp", Fence(run_token, started, started), value=b"v2", content_type="text/plain")
    assert not result.written
    r = store.read(ns, "sp", new_token())
    assert r.decision is Decision.STALE and r.value == b"v1"
    # Even a run that somehow kept a lease cannot land a call that started before the soft purge.
    assert not _write(store, ns, "sp", None, b"v2", started=started)
    assert _write(store, ns, "sp", None, b"v3", started=store.now_ms() + 1)


def test_a_queued_refresh_retakes_the_lease_a_purge_freed(store: CacheStore, ns: Namespace) -> None:
    token = new_token()
    assert store.read(ns, "qp", token).won_lease
    store.purge(ns, "qp")
    again = store.read(ns, "qp", new_token())
    assert not again.won_lease and again.lease_state == "queued"  # still one refresh in the queue
    assert store.claim(ns, "qp", token)


def test_a_purge_is_final_even_when_the_refresh_outlives_its_tombstone(store: CacheStore, ns: Namespace) -> None:
    # Before the fix the tombstone (2 x (origin timeout + lease TTL)) was the only fence: a
    # refresh whose origin call outlived it found neither tombstone nor stored value and wrote
    # the purged generation back.
    assert _write(store, ns, "long", None, b"v1", started=store.now_ms() - 20)
    run_token = _run_lease(store, ns, "long")
    started = store.now_ms()
    assert store.purge(ns, "long")
    store.redis.delete(EntryKeys.of(ns.name, "long").tombstone)  # the call outlived every timer
    result = store.fenced_write(
        ns, "long", Fence(run_token, started, started), value=b"purged", content_type="text/plain"
    )
    assert result.status == "lost_lease"
    assert store.read(ns, "long", new_token()).decision is Decision.MISS
