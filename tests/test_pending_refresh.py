"""Past a value's HIT moment, while a refresh of its key is under way, each web process answers
the key from its near-cache as Redis would (EARLY, then STALE), instead of asking Redis on every
read (shared/degraded.py `pending_until_ms`, shared/answers.py `near_answer`); on a real redis-server."""

from __future__ import annotations

from typing import Any

from shared.answers import Served
from shared.namespaces import Namespace
from shared.nearcache import NearCache
from shared.protocol import AnswerOutcome
from shared.replies import ReadResult
from shared.settings import Settings
from shared.store import CacheStore, new_token
from tests.readpaths import read_path_for, store_fresh
from tests.stack import wait_until


class CountedReads(CacheStore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0

    def read(self, ns: Namespace, key: str, token: str) -> ReadResult:
        self.reads += 1
        return super().read(ns, key, token)


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
