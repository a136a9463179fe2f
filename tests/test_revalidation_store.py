"""304 revalidation and uncacheable answers through FENCED_WRITE, against a real redis-server."""

from __future__ import annotations

import base64
import json

import pytest

from shared.freshness import Lifetimes
from shared.keys import DEFAULT_KEYSPACE, EntryKeys
from shared.namespaces import Namespace
from shared.origin import OriginResponse, Validators
from shared.store import CacheStore, Fence, WriteResult, new_token
from shared.xfetch import Decision, may_revalidate

V1 = Validators(etag='"v1"', last_modified="Wed, 25 Nov 2026 10:00:00 GMT")
LIFE = Lifetimes(soft_ttl_ms=5000, stale_ms=10_000, stale_if_error_ms=0)


def run_lease(store: CacheStore, ns: Namespace, key: str) -> str:
    """Take the key's lease as a refresh run would (won, then claimed); returns the run token."""
    k = EntryKeys.of(ns.name, key)
    store.redis.delete(k.lease, k.queued)
    token = new_token()
    assert store.take_lease(ns, key, token)
    run_token = store.claim(ns, key, token)
    assert run_token
    return run_token


def write(store: CacheStore, ns: Namespace, key: str, value: bytes, started: int, lifetimes: Lifetimes = LIFE) -> int:
    """A full write by a fresh run; returns the written value's `at`."""
    result = store.fenced_write(
        ns,
        key,
        Fence(run_lease(store, ns, key), started, started),
        value=value,
        content_type="text/plain",
        validators=V1,
        lifetimes=lifetimes,
    )
    assert result.status == "written"
    return started


def revalidate(
    store: CacheStore, ns: Namespace, key: str, run_token: str, started: int, validated_at: int, u: float = 0.5
) -> WriteResult:
    return store.revalidate(
        ns,
        key,
        Fence(run_token, started, started),
        validated_at_ms=validated_at,
        validators=Validators(),
        lifetimes=LIFE,
        u=u,
    )


def entry(store: CacheStore, ns: Namespace, key: str) -> dict[str, str]:
    raw = store.redis.hgetall(EntryKeys.of(ns.name, key).entry)
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_a_304_keeps_the_bytes_and_starts_a_new_lifetime(store: CacheStore, ns: Namespace) -> None:
    at = write(store, ns, "k", b"body", store.now_ms() - 100)
    before = entry(store, ns, "k")
    stored = store.stored_validators(ns, "k")
    assert stored is not None and stored.at_ms == at and stored.validators == V1 and stored.lifetimes == LIFE
    started = store.now_ms()
    # The write dated its lifetime by the Redis clock: on a fast machine the 304 can start in
    # that same millisecond, and then its new lifetime could not end later. Start it after.
    while started + LIFE.soft_ttl_ms <= int(before["soft"]):
        started = store.now_ms()
    result = revalidate(store, ns, "k", run_lease(store, ns, "k"), started, at, u=0.25)
    assert result.status == "revalidated" and result.written
    after = entry(store, ns, "k")
    # Same bytes, type, ETag and origin validators (the 304 sent none); new at, soft and draw.
    for field in ("v", "ct", "etag", "oetag", "olm"):
        assert after[field] == before[field], field
    assert int(after["at"]) == started and int(after["soft"]) == result.soft_ms > int(before["soft"])
    assert float(after["u"]) == 0.25
    assert store.lease_holder(ns, "k") is None
    r = store.read(ns, "k", new_token())
    assert r.decision is Decision.HIT and r.value == b"body" and r.at_ms == started


def test_a_304_replaces_the_validators_it_carries(store: CacheStore, ns: Namespace) -> None:
    at = write(store, ns, "k", b"body", store.now_ms() - 100)
    result = store.revalidate(
        ns,
        "k",
        Fence(run_lease(store, ns, "k"), store.now_ms(), store.now_ms()),
        validated_at_ms=at,
        validators=Validators(etag='"v1b"'),
        lifetimes=LIFE,
    )
    assert result.written
    stored = store.stored_validators(ns, "k")
    assert stored is not None and stored.validators == Validators('"v1b"', V1.last_modified)


def test_a_paused_refreshers_304_cannot_extend_a_newer_value(store: CacheStore, ns: Namespace) -> None:
    """A sends v1's validator and pauses past its lease; B takes over and writes v2. A's 304
    vouches for v1's bytes only: it lands nowhere, and v2 keeps exactly its own life."""
    t1 = write(store, ns, "k", b"v1", store.now_ms() - 1000)
    paused = run_lease(store, ns, "k")
    started_a = store.now_ms() - 500
    # A's lease runs out while it is paused: B's refresh wins it and stores v2.
    write(store, ns, "k", b"v2", store.now_ms() - 200, Lifetimes(2000, 0, 0))
    v2 = entry(store, ns, "k")
    result = revalidate(store, ns, "k", paused, started_a, t1)
    assert result.status == "lost_lease" and not result.written
    assert entry(store, ns, "k") == v2


def test_a_304_for_replaced_bytes_is_fenced_even_with_the_lease(store: CacheStore, ns: Namespace) -> None:
    """Whatever holds the lease, a 304 vouches for the validated bytes only: if another value is
    stored now (even one whose call started before this 304's), nothing changes."""
    t1 = write(store, ns, "k", b"v1", store.now_ms() - 1000)
    write(store, ns, "k", b"v2", t1 + 10, Lifetimes(2000, 0, 0))
    v2 = entry(store, ns, "k")
    run_token = run_lease(store, ns, "k")
    result = revalidate(store, ns, "k", run_token, store.now_ms(), t1)
    assert result.status == "fenced"
    assert entry(store, ns, "k") == v2
    assert store.lease_holder(ns, "k") is None, "a fenced 304 still releases its lease"


def test_a_304_started_before_a_soft_purge_is_fenced(store: CacheStore, ns: Namespace) -> None:
    at = write(store, ns, "k", b"v1", store.now_ms() - 1000)
    run_token = run_lease(store, ns, "k")
    started = store.now_ms() - 10
    assert store.soft_purge(ns, "k")
    # The soft purge freed the lease; a run that re-took it still started before the purge.
    run_token = run_lease(store, ns, "k")
    assert revalidate(store, ns, "k", run_token, started, at).status == "fenced"
    assert store.read(ns, "k", new_token()).decision is Decision.STALE


def test_a_304_after_a_hard_purge_has_no_bytes_to_keep(store: CacheStore, ns: Namespace) -> None:
    at = write(store, ns, "k", b"v1", store.now_ms() - 1000)
    run_token = run_lease(store, ns, "k")
    assert store.purge(ns, "k")
    assert revalidate(store, ns, "k", run_token, store.now_ms(), at).status == "lost_lease"
    # Even a run that starts after the purge cannot revalidate bytes that are gone.
    assert revalidate(store, ns, "k", run_lease(store, ns, "k"), store.now_ms() + 5, at).status == "fenced"
    assert store.read(ns, "k", new_token()).decision is Decision.MISS


@pytest.mark.parametrize(
    ("stored_offset", "validated_offset", "started_offset"),
    [(0, 0, 5), (0, 0, 0), (0, 0, -5), (0, -3, 5), (3, 0, 5), (None, 0, 5)],
)
def test_revalidate_script_agrees_with_the_pure_rule(
    store: CacheStore,
    ns: Namespace,
    stored_offset: int | None,
    validated_offset: int,
    started_offset: int,
) -> None:
    base = store.now_ms() - 1000
    stored_at = None
    if stored_offset is not None:
        stored_at = write(store, ns, "r", b"v", base + stored_offset)
    landed = revalidate(
        store, ns, "r", run_lease(store, ns, "r"), base + started_offset, base + validated_offset
    ).written
    assert landed == may_revalidate(base + started_offset, stored_at, base + validated_offset, None)


def test_no_stored_validators_without_an_origin_validator_or_for_a_404(store: CacheStore, ns: Namespace) -> None:
    started = store.now_ms()
    store.fenced_write(
        ns, "plain", Fence(run_lease(store, ns, "plain"), started, started), value=b"x", content_type="t"
    )
    store.fenced_write(
        ns,
        "gone",
        Fence(run_lease(store, ns, "gone"), started, started),
        value=b"",
        content_type="t",
        negative=True,
    )
    assert store.stored_validators(ns, "plain") is None
    assert store.stored_validators(ns, "gone") is None
    assert store.stored_validators(ns, "never") is None


def test_an_uncacheable_answer_is_handed_over_in_the_ready_message_and_deletes_the_entry(
    store: CacheStore, ns: Namespace
) -> None:
    write(store, ns, "u", b"old", store.now_ms() - 1000)
    pubsub = store.redis.pubsub()
    pubsub.subscribe(DEFAULT_KEYSPACE.ready_channel)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    result = store.drop_uncacheable(
        ns,
        "u",
        Fence(run_lease(store, ns, "u"), store.now_ms(), store.now_ms()),
        hand_over=OriginResponse(b"\x00secret\xff", "application/octet-stream"),
    )
    assert result.status == "uncacheable" and not result.written
    message = json.loads(pubsub.get_message(timeout=1)["data"])
    assert message["key"] == "u" and message["status"] == "ready"
    assert base64.b64decode(message["body"]) == b"\x00secret\xff"
    assert store.lease_holder(ns, "u") is None
    assert store.read(ns, "u", new_token()).decision is Decision.MISS
    pubsub.close()


def test_an_uncacheable_answer_from_a_run_that_lost_its_lease_hands_nothing_over(
    store: CacheStore, ns: Namespace
) -> None:
    run_token = run_lease(store, ns, "u")
    store.purge(ns, "u")
    pubsub = store.redis.pubsub()
    pubsub.subscribe(DEFAULT_KEYSPACE.ready_channel)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    result = store.drop_uncacheable(
        ns,
        "u",
        Fence(run_token, store.now_ms(), store.now_ms()),
        hand_over=OriginResponse(b"from before the purge", "text/plain"),
    )
    assert result.status == "lost_lease"
    message = json.loads(pubsub.get_message(timeout=1)["data"])
    assert "body" not in message
    pubsub.close()


def test_a_failure_stretches_a_value_by_its_own_stale_if_error(store: CacheStore, ns: Namespace) -> None:
    write(store, ns, "e", b"v", store.now_ms(), Lifetimes(soft_ttl_ms=1000, stale_ms=1000, stale_if_error_ms=60_000))
    k = EntryKeys.of(ns.name, "e")
    before = store.redis.pexpiretime(k.entry)
    store.record_failure(ns, "e", run_lease(store, ns, "e"))
    # The namespace's own stale-if-error is the fixture's default (3600 s): the entry's wins.
    assert 58_000 <= store.redis.pexpiretime(k.entry) - before <= 60_000
