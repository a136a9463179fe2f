"""Past a value's HIT moment, while a refresh of its key is under way, each web process answers
the key from its near-cache as Redis would (EARLY, then STALE), instead of asking Redis on every
read (shared/degraded.py `pending_until_ms`, shared/answers.py `near_answer`); on a real redis-server."""

from __future__ import annotations

from typing import Any

from shared.answers import Served
from shared.namespaces import Namespace, build_namespace
from shared.nearcache import NearCache, hit_until_ms
from shared.protocol import AnswerOutcome, LeaseState
from shared.replies import ReadResult
from shared.settings import Settings
from shared.store import CacheStore, new_token
from tests.readpaths import CountedReads, read_path_for, store_fresh
from tests.stack import wait_until


def test_reads_during_a_refresh_are_answered_from_memory_as_redis_would_and_the_purge_ends_it(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    counted = CountedReads(store.redis, settings)
    store_fresh(counted, ns, "hot", b"v1")  # fresh for the settings' 5 s
    near: NearCache[ReadResult] = NearCache(1 << 20)
    near.resume()
    sent: list[Any] = []
    path = read_path_for(settings, counted, sent.append, near_cache=near)
    # Another process's read won the lease: a refresh of the key is under way from here on.
    counted.soft_purge(ns, "hot")  # stale now (the value kept for its stale window)
    assert counted.read(ns, "hot", new_token()).won_lease
    counted.reads = 0

    first = path.read(ns, "hot")
    assert isinstance(first, Served) and first.outcome is AnswerOutcome.STALE and not first.from_near_cache
    answers = [path.read(ns, "hot") for _ in range(50)]
    assert counted.reads == 1  # the other 50 from memory
    assert all(isinstance(a, Served) and a.outcome is AnswerOutcome.STALE and a.from_near_cache for a in answers)
    assert all(a.result.value == b"v1" for a in answers if isinstance(a, Served))
    assert not sent  # the refresh under way is the one: none sent from here

    near.invalidate(ns.name, "hot")  # what the hub does on the refresh's publish, or a purge
    again = path.read(ns, "hot")
    assert isinstance(again, Served) and not again.from_near_cache and counted.reads == 2


def test_a_read_that_wins_the_lease_is_not_pending_and_the_lease_bounds_the_rest(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    counted = CountedReads(store.redis, settings)
    store_fresh(counted, ns, "k", b"v1")
    counted.soft_purge(ns, "k")
    near: NearCache[ReadResult] = NearCache(1 << 20)
    near.resume()
    path = read_path_for(settings, counted, lambda request: None, near_cache=near)
    won = path.read(ns, "k")  # wins the lease and enqueues: no pending window of its own
    assert isinstance(won, Served) and won.outcome is AnswerOutcome.STALE
    second = path.read(ns, "k")  # finds the lease held: pending from here
    assert isinstance(second, Served) and not second.from_near_cache
    third = path.read(ns, "k")
    assert isinstance(third, Served) and third.from_near_cache and counted.reads == 2
    # The lease (the settings' 2 s) ends without a write: then Redis is asked again.
    wait_until(lambda: near.get(ns.name, "k", count=False) is None, 5, "the pending window to end")


def test_a_process_past_its_capacity_refreshes_nothing_early_and_answers_the_value_until_it_expires(
    settings: Settings, store: CacheStore
) -> None:
    # beta this large: the head start is its bound, a quarter of the 5 s TTL (1.25 s of EARLY).
    ns = build_namespace("early-ns", {"origin": "http://127.0.0.1:9/items/{key}", "xfetch_beta": 1e12}, settings)
    counted = CountedReads(store.redis, settings)
    store_fresh(counted, ns, "early", b"v1")
    near: NearCache[ReadResult] = NearCache(1 << 20)
    near.resume()
    sent: list[Any] = []
    path = read_path_for(settings, counted, sent.append, near_cache=near)
    path.behind = lambda: True
    peek = counted.inspect(ns, "early")
    assert peek.soft_ms is not None
    moment = hit_until_ms(peek.soft_ms, peek.delta_ms, ns.beta, peek.u, peek.ttl_ms)
    assert peek.soft_ms - moment >= 1_000
    wait_until(lambda: counted.now_ms() >= moment + 50, 10, "the value's XFetch moment")
    counted.reads = 0
    first = path.read(ns, "early")
    assert isinstance(first, Served) and first.outcome is AnswerOutcome.EARLY
    assert not sent  # held back: no refresh sent
    assert counted.inspect(ns, "early").lease == LeaseState.FREE  # and the lease it won given back
    later = path.read(ns, "early")
    assert isinstance(later, Served) and later.from_near_cache and later.outcome is AnswerOutcome.EARLY
    assert counted.reads == 1
    # Once it expires the first read goes to Redis, and refreshes it (STALE: no early refresh).
    wait_until(lambda: counted.now_ms() >= peek.soft_ms + 50, 10, "the value's expiry")
    stale = path.read(ns, "early")
    assert isinstance(stale, Served) and stale.outcome is AnswerOutcome.STALE and not stale.from_near_cache
    assert len(sent) == 1 and counted.reads == 2


def test_a_proxy_namespace_never_answers_from_memory_past_the_hit_moment(settings: Settings) -> None:
    # Whether a stored response may answer a request, stale or not, is RFC 9111's to decide per
    # request (the request's own Cache-Control, must-revalidate...): Redis answers every such read.
    from shared.degraded import pending_until_ms
    from shared.protocol import Decision

    plain = build_namespace("plain", {"origin": "http://127.0.0.1:9/items/{key}"}, settings)
    proxy = build_namespace("cat", {"proxy": "http://127.0.0.1:9/api/", "mount": "/catalog"}, settings)
    now = 1_796_000_000_000
    stale = ReadResult(
        decision=Decision.STALE,
        won_lease=False,
        now_ms=now,
        value=b"v",
        content_type="text/plain",
        etag="",
        at_ms=now - 6_000,
        soft_ms=now - 1_000,
        delta_ms=5.0,
        negative=False,
        lease_state=LeaseState.HELD,
        lease_pttl_ms=4_000,
        u=0.5,
        stale_ms=300_000,
    )
    assert pending_until_ms(stale, plain) == now + 4_000  # the lease's end, within the stale window
    assert pending_until_ms(stale, proxy) is None
    assert pending_until_ms(stale, proxy, held_back=True) is None
