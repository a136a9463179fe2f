"""Tags and group purges against a real redis-server: the index, the fence across slots, hard and soft."""

from __future__ import annotations

import pytest

from shared.group_purge import GroupPurge
from shared.keys import EntryKeys
from shared.namespaces import Namespace, build_namespace
from shared.nearcache import NearCache, NoNearCache
from shared.settings import Settings
from shared.store import CacheStore, Fence, new_token
from shared.tags import MAX_TAGS_PER_VALUE, header_tags, member, value_tags
from tests.stack import wait_until


@pytest.fixture
def tagged(settings: Settings) -> Namespace:
    raw = {"origin": "http://127.0.0.1:9/items/{key}", "tags": ["catalog", "product:{key}"]}
    return build_namespace("shop", raw, settings)


def _run(store: CacheStore, ns: Namespace, key: str) -> str:
    token = new_token()
    assert store.take_lease(ns, key, token)
    run_token = store.claim(ns, key, token)
    assert run_token
    return run_token


def _write(store: CacheStore, ns: Namespace, key: str, value: bytes, tags: tuple[str, ...] = (), **kw: int) -> str:
    run_token = _run(store, ns, key)
    started = kw.get("started", store.now_ms())
    return store.fenced_write(
        ns, key, Fence(run_token, started, started), value=value, content_type="text/plain", tags=tags
    ).status


def _next_ms(store: CacheStore) -> None:
    """Let the Redis clock pass the current millisecond: a start in the same ms as a stored value
    or a purge is fenced (a tie never lands)."""
    now = store.now_ms()
    wait_until(lambda: store.now_ms() > now, 2, "the next millisecond")


def _purger(store: CacheStore, namespaces: list[Namespace]) -> GroupPurge:
    return GroupPurge(store, NoNearCache(), {ns.name: ns for ns in namespaces})


def test_a_value_carries_its_namespace_rules_and_the_origins_tags(store: CacheStore, tagged: Namespace) -> None:
    assert _write(store, tagged, "42", b"v", ("category:7", "catalog")) == "written"
    stored = store.redis.hget(EntryKeys.of("shop", "42").entry, "tg").decode()
    assert stored.split("\n") == ["catalog", "product:42", "category:7"]
    now = store.now_ms()
    for group in (store.keys.tag_group("product:42"), store.keys.namespace_group("shop")):
        score = store.redis.zscore(group.members, member("shop", "42"))
        life = tagged.soft_ttl_ms + tagged.stale_ttl_ms + int(tagged.stale_if_error_seconds * 1000)
        assert now + life - 1000 <= score <= now + life + 1000
        # The index key lives exactly as long as its longest-lived member, not longer.
        assert abs(store.redis.pexpiretime(group.members) - score) <= 1


def test_header_tags_are_space_separated_and_bad_ones_are_dropped() -> None:
    assert header_tags("  a  product:42\tb ") == ("a", "product:42", "b")
    assert header_tags("ok " + "x" * 2000) == ("ok",)
    assert header_tags(None) == ()
    many = value_tags(["r"], "k", [f"t{i}" for i in range(200)])
    assert len(many) == MAX_TAGS_PER_VALUE and many[0] == "r"


def test_a_hard_tag_purge_deletes_every_value_carrying_the_tag_and_only_those(
    store: CacheStore, tagged: Namespace, ns: Namespace
) -> None:
    for i in range(600):  # more than one walk batch
        _write(store, tagged, f"p{i}", b"v", ("hot",) if i % 2 == 0 else ())
    _write(store, ns, "other", b"v", ("hot",))
    before = store.now_ms()
    report = _purger(store, [tagged, ns]).purge_tags(["hot"], soft=False)
    assert report.keys["hard"] == 301 and report.keys["fenced"] == 0
    assert not store.redis.exists(EntryKeys.of("shop", "p0").entry, EntryKeys.of("t", "other").entry)
    assert store.redis.exists(EntryKeys.of("shop", "p1").entry)
    assert store.read(tagged, "p2", new_token()).decision == "MISS"
    # A refresh that started before the purge cannot land (tombstone).
    assert _write(store, tagged, "p0", b"old", ("hot",), started=before) == "fenced"


def test_a_soft_tag_purge_serves_stale_and_fences_the_refresh_in_flight(store: CacheStore, tagged: Namespace) -> None:
    _write(store, tagged, "s", b"v1", ("group",))
    run_token = _run(store, tagged, "s")  # a refresh whose origin call is under way
    started = store.now_ms()
    report = _purger(store, [tagged]).purge_tags(["group"], soft=True)
    assert report.keys["soft"] == 1
    fence = Fence(run_token, started, started)
    assert store.fenced_write(tagged, "s", fence, value=b"pre-purge", content_type="text/plain").status == "lost_lease"
    r = store.read(tagged, "s", new_token())
    assert r.decision == "STALE" and r.value == b"v1" and r.won_lease  # served stale, refreshed once
    assert not store.read(tagged, "s", new_token()).won_lease


@pytest.mark.parametrize("soft", [False, True])
def test_a_first_fill_enlisted_before_the_purge_is_fenced_by_the_walk(
    store: CacheStore, tagged: Namespace, soft: bool
) -> None:
    """The writer enlisted (ENLIST ran before MARK) but has not written yet: the walk finds the
    member, no entry, and deletes the lease: the write that follows cannot land."""
    run_token = _run(store, tagged, "first")
    started = store.now_ms()
    assert store.groups.enlist("shop", "first", ("late",), 60_000) == 0
    report = _purger(store, [tagged]).purge_tags(["late"], soft=soft)
    assert report.keys["fenced"] == 1
    fence = Fence(run_token, started, started)
    result = store.fenced_write(tagged, "first", fence, value=b"pre", content_type="text/plain", tags=("late",))
    assert result.status in ("lost_lease", "fenced")
    assert not store.redis.exists(EntryKeys.of("shop", "first").entry)


@pytest.mark.parametrize("soft", [False, True])
def test_a_first_fill_enlisting_after_the_walk_sees_the_moment(
    store: CacheStore, tagged: Namespace, soft: bool
) -> None:
    """The tag only became known when the origin answered, after the purge had walked: the
    writer's enlist reads the moment and its write is refused."""
    run_token = _run(store, tagged, "fill")
    started = store.now_ms() - 1
    report = _purger(store, [tagged]).purge_tags(["fresh-tag"], soft=soft)
    assert report.members == 0
    fence = Fence(run_token, started, started)
    result = store.fenced_write(tagged, "fill", fence, value=b"pre", content_type="text/plain", tags=("fresh-tag",))
    assert result.status == "fenced"
    assert not store.redis.exists(EntryKeys.of("shop", "fill").entry)
    assert store.lease_holder(tagged, "fill") is None  # released: the next read refreshes
    # A refresh that starts after the purge lands.
    _next_ms(store)
    assert _write(store, tagged, "fill", b"post", ("fresh-tag",)) == "written"


def test_a_stored_value_without_the_tag_is_kept_but_its_refresh_in_flight_is_fenced(
    store: CacheStore, tagged: Namespace
) -> None:
    _write(store, tagged, "k", b"v1", ("old-tag",))
    _next_ms(store)
    assert _write(store, tagged, "k", b"v2", ()) == "written"  # the member of old-tag stays until its life is over
    report = _purger(store, [tagged]).purge_tags(["old-tag"], soft=False)
    assert report.keys["kept"] == 1 and store.read(tagged, "k", new_token()).value == b"v2"
    run_token = _run(store, tagged, "k")
    assert _purger(store, [tagged]).purge_tags(["old-tag"], soft=False).keys["fenced"] == 1
    assert store.lease_holder(tagged, "k") is None and run_token


def test_a_namespace_purge_covers_every_value_of_the_namespace_only(
    store: CacheStore, tagged: Namespace, ns: Namespace
) -> None:
    for i in range(300):
        _write(store, tagged, f"n{i}", b"v")
    _write(store, ns, "elsewhere", b"v")
    near: NearCache[object] = NearCache(1 << 20, suspended=False)
    purge = GroupPurge(store, near, {"shop": tagged, "t": ns})
    token = near.begin_read("shop", "n1")
    report = purge.purge_namespace(tagged, soft=True)
    assert report.keys["soft"] == 300
    assert store.read(tagged, "n5", new_token()).decision == "STALE"
    assert store.read(ns, "elsewhere", new_token()).decision == "HIT"
    # A read begun before the purge may not fill the near-cache with what it read.
    r = store.read(tagged, "n1", new_token())
    assert not near.put("shop", "n1", r, r.now_ms, r.now_ms + 10_000, token)


def test_the_index_trims_members_whose_values_are_gone(store: CacheStore, tagged: Namespace) -> None:
    group = store.keys.tag_group("t")
    for i in range(40):
        store.groups.enlist("shop", f"gone{i}", ("t",), 1)
    over = store.now_ms() + 2
    wait_until(lambda: store.now_ms() > over, 2, "the members' lives to be over")
    store.groups.enlist("shop", "live", ("t",), 60_000)
    store.groups.enlist("shop", "live", ("t",), 60_000)
    store.groups.enlist("shop", "live", ("t",), 60_000)
    assert store.redis.zcard(group.members) == 1  # 16 trimmed per enlist
    assert store.redis.pttl(group.members) > 50_000


def test_a_callable_origin_returns_its_tags_with_its_value(settings: Settings) -> None:
    from shared.origin import CallableOrigin

    ns = build_namespace("c", {"origin": "tests.origins:tagged", "tags": ["catalog"]}, settings)
    response = CallableOrigin(ns, 1 << 20).fetch("42")
    assert response.tags == ("product:42", "category:7")  # type: ignore[union-attr]
    assert value_tags(ns.tags, "42", response.tags) == ("catalog", "product:42", "category:7")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"tags": "catalog"}, "tags: must be a list of strings"),
        ({"tags": ["a", 3]}, "tags: must be a list of strings"),
        ({"tags": [""]}, "tags: '': tag is empty"),
        ({"tags": ["{key}-{key}"]}, "may hold {key} once"),
        ({"tags": ["x" * 300]}, "the limit is 256"),
        ({"tag_header": "Bad Header"}, "tag_header: 'Bad Header' is not a valid HTTP header name"),
    ],
)
def test_a_bad_tag_option_stops_start_up_naming_the_field(
    settings: Settings, raw: dict[str, object], problem: str
) -> None:
    from shared.namespaces import NamespaceConfigError

    with pytest.raises(NamespaceConfigError) as caught:
        build_namespace("bad", {"origin": "http://127.0.0.1:9/items/{key}", **raw}, settings)
    assert "[namespaces.bad]" in str(caught.value) and problem in str(caught.value), str(caught.value)
