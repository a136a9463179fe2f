"""Every Redis name of a deployment carries its prefix (shared/keys.py): keys under HERDLESS_PREFIX,
channels and the broker's names under the prefix and the database, hash tags intact."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import nullcontext
from queue import Queue
from typing import Any

import pytest

from shared.admission import Admission
from shared.answers import Answer, Refused
from shared.coldwait import ColdWaitHub
from shared.degraded import RedisHealth
from shared.keys import Keyspace
from shared.namespaces import Namespace, build_namespace
from shared.origin_slots import OriginSlots
from shared.rates import RateRecorder
from shared.readpath import NoNearCache, ReadPath
from shared.refresher import Refresher
from shared.settings import Settings, SettingsError, load_settings
from shared.store import CacheStore, make_redis, pubsub_client
from shared.tasks import BROKER_SEP, broker_lists, celery_config
from tests.stack import RedisServer, wait_until

PREFIX, DB = "zz", 4


def test_the_names_of_one_deployment_carry_its_prefix_and_channels_its_database() -> None:
    keys = Keyspace.of(Settings(redis_url="redis://127.0.0.1:6379/3", herdless_prefix="blue"))
    entry = keys.entry("ns", "k")
    assert (entry.entry, entry.lease, entry.tombstone, entry.queued) == (
        "blue:{ns:k}:e",
        "blue:{ns:k}:l",
        "blue:{ns:k}:t",
        "blue:{ns:k}:q",
    )
    assert keys.breaker("o") == "blue:breaker:{o}" and keys.slots("o") == "blue:slots:{o}"
    assert (keys.ready_channel, keys.invalidation_channel) == ("blue:3:ready", "blue:3:inval")
    assert keys.queue == "blue.3.refresh" and BROKER_SEP not in keys.queue  # kombu splits list names on it
    assert broker_lists(keys)[0] == "blue:3:blue.3.refresh"
    config = celery_config(Settings(redis_url="redis://127.0.0.1:6379/3", herdless_prefix="blue"))
    assert config["task_default_queue"] == keys.queue and list(config["task_queues"]) == [keys.queue]
    assert config["broker_transport_options"]["global_keyprefix"] == "blue:3:"


def test_another_database_or_another_prefix_changes_every_server_wide_name() -> None:
    def server_wide(url: str, prefix: str) -> set[str]:
        keys = Keyspace.of(Settings(redis_url=url, herdless_prefix=prefix))
        return {keys.ready_channel, keys.invalidation_channel, keys.queue, keys.broker_keyprefix}

    one = server_wide("redis://h:6379/1", "hl")
    assert not one & server_wide("redis://h:6379/2", "hl")
    assert not one & server_wide("unix:///run/redis.sock?db=2", "hl")
    assert not one & server_wide("redis://h:6379/1", "other")
    assert Keyspace.of(Settings(redis_url="redis://h:6379/0")) == Keyspace("hl", 0)


@pytest.mark.parametrize("bad", ["a:b", "{tag}", "a b", "a*", "-lead", "x" * 65, "é"])
def test_a_prefix_that_could_break_a_name_stops_start_up(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("HERDLESS_PREFIX", bad)
    with pytest.raises(SettingsError):
        load_settings()


def test_an_empty_prefix_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERDLESS_PREFIX", "")
    assert load_settings().herdless_prefix == "hl"


# -- a workload on a private Redis: every key written and every channel published is ours -------


@pytest.fixture
def engine(redis_server: RedisServer) -> Iterator[tuple[Settings, CacheStore, Namespace]]:
    redis_server.client().flushall()
    settings = Settings(
        redis_url=redis_server.url_for(DB),
        herdless_prefix=PREFIX,
        lease_ttl_seconds=2,
        cache_ttl_seconds=5,
        stale_ttl_seconds=10,
        cold_wait_timeout_seconds=10,
    )
    store = CacheStore(make_redis(settings), settings)
    ns = build_namespace("t", {"origin": "tests.origins:compute", "strategy": "xfetch"}, settings)
    yield settings, store, ns


def test_every_key_the_engine_writes_and_every_channel_it_publishes_carries_the_prefix(
    redis_server: RedisServer, engine: tuple[Settings, CacheStore, Namespace]
) -> None:
    settings, store, ns = engine
    published: list[str] = []
    watcher = redis_server.client().pubsub()
    watcher.psubscribe("*")
    assert watcher.get_message(timeout=5)["type"] == "psubscribe"
    hub = ColdWaitHub(lambda: pubsub_client(settings), 100, ack_client=store.redis, keys=store.keys)
    hub.start()
    assert hub.connected.wait(10), "the hub did not subscribe"
    sent: Queue[Any] = Queue()
    read_path = ReadPath(
        settings,
        store,
        send_refresh=sent.put,
        open_batch=lambda: nullcontext(sent.put),
        waiter=hub,
        near_cache=NoNearCache(),
        health=RedisHealth(store.redis.ping),
        admission=Admission(None),
    )
    refresher = Refresher(settings, {ns.name: ns}, store, slots=lambda name: OriginSlots(store.redis, name, store.keys))
    try:

        def cold_read(key: str) -> Answer:
            answers: list[Answer] = []
            reader = threading.Thread(target=lambda: answers.append(read_path.read(ns, key)))
            reader.start()
            refresher.run(sent.get(timeout=10))
            reader.join(15)
            return answers[0]

        assert not isinstance(cold_read("value"), Refused)
        failed = cold_read("boom-1")  # the origin raises: a cooldown, a breaker failure, an error wake-up
        assert isinstance(failed, Refused) and failed.status == 502
        read_path.purge(ns, "value")  # a tombstone, an acknowledged invalidation
        read_path.warm(ns, ["w1", "w2"])
        for _ in range(2):
            refresher.run(sent.get(timeout=10))
        recorder = RateRecorder()
        recorder.bind(store.redis, store.keys)
        recorder.add("answers", ns.name, "hit")
        recorder.flush()
        wait_until(lambda: len(_drain(watcher, published)) >= 5, 10, "the engine's publishes to be seen")
        assert store.redis.zcard(f"{PREFIX}:subscribers") == 1  # the hub counts in purges (gone once it stops)
    finally:
        hub.stop()
        watcher.close()

    names = {name.decode() for name in redis_server.client(db=DB).scan_iter(count=1000)}
    assert names and all(name.startswith(f"{PREFIX}:") for name in names), sorted(names)
    for expected in ("zz:{t:boom-1}:l", "zz:{t:value}:t", "zz:{t:w1}:e"):
        assert expected in names, " ".join(sorted(names))
    assert any(name.startswith("zz:breaker:{") for name in names), sorted(names)
    assert any(name.startswith("zz:rates:") for name in names), sorted(names)
    assert not redis_server.client(db=0).dbsize()
    assert set(published) == {f"{PREFIX}:{DB}:ready", f"{PREFIX}:{DB}:inval"}, published


def _drain(pubsub: Any, into: list[str]) -> list[str]:
    while (message := pubsub.get_message(timeout=0.05)) is not None:
        if message["type"] == "pmessage":
            channel = message["channel"]
            into.append(channel.decode() if isinstance(channel, bytes) else channel)
    return into
