"""Readers of a key that arrive while another reader of their process reads it from Redis wait for
that read instead of reading too (shared/readpath.py, `read`), on a real redis-server."""

from __future__ import annotations

import threading
from typing import Any

from shared.answers import Answer, Served
from shared.namespaces import Namespace
from shared.nearcache import NearCache
from shared.protocol import AnswerOutcome
from shared.replies import ReadResult
from shared.settings import Settings
from shared.store import CacheStore
from tests.readpaths import CountedReads, read_path_for, store_fresh
from tests.stack import wait_until

READERS = 20


def _read_at_once(read: Any, n: int) -> list[Answer]:
    answers: list[Answer] = []
    threads = [threading.Thread(target=lambda: answers.append(read())) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return answers


def test_readers_arriving_during_the_first_read_of_a_stored_key_share_it(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    slow = CountedReads(store.redis, settings, delay=0.2)  # READ 200 ms slower
    store_fresh(slow, ns, "shared")
    near: NearCache[ReadResult] = NearCache(1 << 20)
    near.resume()
    path = read_path_for(settings, slow, lambda request: None, near_cache=near)
    # The first reader alone, then the others once its read is under way (its 200 ms).
    answers: list[Answer] = []
    first = threading.Thread(target=lambda: answers.append(path.read(ns, "shared")))
    first.start()
    wait_until(lambda: path.reading(ns.name, "shared"), 5, "the first read under way", interval=0.005)
    answers += _read_at_once(lambda: path.read(ns, "shared"), READERS - 1)
    first.join(10)
    assert len(answers) == READERS
    assert all(isinstance(a, Served) and a.outcome is AnswerOutcome.HIT and a.result.value == b"v" for a in answers)
    assert slow.reads == 1  # the others waited for it and took its value from the near-cache
    assert not path.reading(ns.name, "shared")


def test_without_a_near_cache_each_reader_still_reads_for_itself(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    # What a waiting reader does when the first read leaves it nothing to take: it reads itself.
    slow = CountedReads(store.redis, settings, delay=0.2)  # READ 200 ms slower
    store_fresh(slow, ns, "alone")
    path = read_path_for(settings, slow, lambda request: None)
    answers = _read_at_once(lambda: path.read(ns, "alone"), 5)
    assert [a.outcome for a in answers if isinstance(a, Served)] == [AnswerOutcome.HIT] * 5
    assert slow.reads == 5
