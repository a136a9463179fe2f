"""An early refresh waits for an idle-enough queue (shared/queuebound.py EARLY_MAX_WAITING): while
that many refresh messages wait, an EARLY read is served without enqueueing and gives its lease
back; once the queue drains below it, early refreshes are sent again; other refreshes never wait
for it. Against a real redis-server."""

from __future__ import annotations

from shared.answers import Served
from shared.batchread import read_batch
from shared.freshness import Lifetimes
from shared.keys import EntryKeys
from shared.namespaces import Namespace, build_namespace
from shared.protocol import AnswerOutcome
from shared.queuebound import EARLY_MAX_WAITING
from shared.settings import Settings
from shared.store import CacheStore, Fence, new_token
from shared.tasks import RefreshRequest
from tests.stack import wait_until
from tests.test_warm import _read_path


def _early(store: CacheStore, ns: Namespace, key: str) -> None:
    """A value whose XFetch moment has passed: its refresh took 100 s (d), so its head start is
    the most the rule allows, a quarter of its 4 s TTL; returns once the Redis clock is 100 ms
    past that moment, leaving 900 ms in which every read of it is EARLY."""
    token = new_token()
    assert store.take_lease(ns, key, token)
    run = store.claim(ns, key, token)
    assert run is not None
    now = store.now_ms()
    fence = Fence(run, now, now - 100_000)
    lifetimes = Lifetimes(4_000, 60_000, 60_000)
    written = store.fenced_write(ns, key, fence, value=b"v", content_type="text/plain", u=0.5, lifetimes=lifetimes)
    assert written.written
    wait_until(lambda: store.now_ms() >= written.soft_ms - 900, 10, "the value's EARLY moment", interval=0.01)


def test_past_the_early_bound_an_early_read_is_served_unrefreshed_and_below_it_refreshed(
    settings: Settings, store: CacheStore, ns: Namespace
) -> None:
    sent: list[RefreshRequest] = []
    read_path = _read_path(settings, store, sent.append)
    for i in range(EARLY_MAX_WAITING):  # the refresh tier is behind: this many messages wait
        assert read_path.queue.admit(ns.name, f"waiting-{i}", f"tok-{i}").state == "admitted"
    _early(store, ns, "hot")
    answer = read_path.read(ns, "hot")
    assert isinstance(answer, Served) and answer.outcome is AnswerOutcome.EARLY
    assert sent == []
    assert store.redis.get(EntryKeys.of(ns.name, "hot").lease) is None  # given back: the next read may try
    # Other refreshes do not wait for an idle queue (MAX_QUEUED_REFRESHES is theirs).
    assert read_path.request_refresh(ns, "manual") is True
    assert [r.key for r in sent] == ["manual"]
    read_path.queue.depart(ns.name, "manual", sent[0].token, taken=True)
    read_path.queue.depart(ns.name, "waiting-0", "tok-0", taken=True)  # the queue drains below the bound
    answer = read_path.read(ns, "hot")
    assert isinstance(answer, Served) and answer.outcome is AnswerOutcome.EARLY
    assert [(r.key, r.reason) for r in sent] == [("manual", "manual"), ("hot", "early")]


def test_a_batch_read_of_a_batch_origin_sends_no_early_refresh_past_the_bound(
    settings: Settings, store: CacheStore
) -> None:
    ns = build_namespace(
        "bo",
        {"origin": "http://127.0.0.1:9/items/{key}", "batch_origin": "http://127.0.0.1:9/items?ids={keys}"},
        settings,
    )
    read_path = _read_path(settings, store, lambda request: None)
    for i in range(EARLY_MAX_WAITING):  # the refresh tier is behind: this many messages wait
        assert read_path.queue.admit(ns.name, f"waiting-{i}", f"tok-{i}").state == "admitted"
    _early(store, ns, "hot")
    sent: list[list[RefreshRequest]] = []
    answers = read_batch(read_path, ns, ["hot"], sent.append)
    assert isinstance(answers["hot"], Served) and answers["hot"].outcome is AnswerOutcome.EARLY
    assert sent == [] and read_path.queue.waiting() == EARLY_MAX_WAITING
    assert store.redis.get(EntryKeys.of(ns.name, "hot").lease) is None  # given back: the next read may try
