"""Last-minute rates: counted in memory where answers and origin calls happen, flushed to
per-second Redis buckets, summed over the last 60 s for the status page."""

from __future__ import annotations

from typing import Any

import pytest

from shared import metrics, rates
from shared.clock import redis_now_ms
from shared.keys import DEFAULT_KEYSPACE
from shared.rates import RateRecorder, bucket_key, last_minute
from tests.stack import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Any:
    # A database of its own: a process that built a web app flushes its own counts to db 0.
    c = redis_server.client(db=3)
    c.flushdb()
    return c


def test_counts_reach_redis_only_when_flushed_and_then_show_in_the_last_minute(client: Any) -> None:
    recorder = RateRecorder(interval_s=3600)  # the test flushes by hand
    recorder.bind(client)
    for _ in range(5):
        recorder.add("answers", "a", "hit")
    recorder.add("answers", "a", "miss")
    recorder.add("origin_calls", "a", "ok")
    recorder.add("answers", "b", "stale", 2)
    assert not client.keys(DEFAULT_KEYSPACE.rates_prefix + "*"), "add() must do no I/O"

    recorder.flush()
    [key] = client.keys(DEFAULT_KEYSPACE.rates_prefix + "*")
    assert 0 < client.ttl(key) <= rates.BUCKET_TTL_SECONDS
    got = last_minute(client, ["a", "b", "quiet"])
    assert got["a"].answers == {"hit": 5, "miss": 1} and got["a"].origin_calls == {"ok": 1}
    assert got["b"].answers == {"stale": 2}
    summary = got["a"].as_json()
    assert summary["answers_total"] == 6 and summary["fresh_share"] == pytest.approx(5 / 6)
    assert got["quiet"].as_json()["fresh_share"] is None


def test_buckets_older_than_a_minute_are_not_counted(client: Any) -> None:
    now = redis_now_ms(client) // 1000
    client.hset(bucket_key(now - rates.WINDOW_SECONDS), "a|answers|hit", 100)
    client.hset(bucket_key(now - rates.WINDOW_SECONDS + 2), "a|answers|hit", 7)
    client.hset(bucket_key(now - 1), "unconfigured|answers|hit", 3)
    assert last_minute(client, ["a"])["a"].answers == {"hit": 7}


def test_counts_survive_a_failed_flush(client: Any) -> None:
    class Down:
        def time(self) -> Any:
            raise ConnectionError("redis is down")

    recorder = RateRecorder(interval_s=3600)
    recorder.bind(Down())
    recorder.add("answers", "a", "hit", 3)
    recorder.flush()
    recorder.bind(client)
    recorder.flush()
    assert last_minute(client, ["a"])["a"].answers == {"hit": 3}


def test_the_windowed_counters_feed_the_recorder_as_well_as_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str, str, float]] = []
    monkeypatch.setattr(rates.RECORDER, "add", lambda *args: seen.append(args))
    before = metrics.ORIGIN_CALLS.labels("wc", "ok")._value.get()
    metrics.ORIGIN_CALLS.labels("wc", "ok").inc()
    metrics.REQUESTS.labels("wc", "hit").inc(2)
    assert metrics.ORIGIN_CALLS.labels("wc", "ok")._value.get() == before + 1
    assert seen == [("origin_calls", "wc", "ok", 1), ("answers", "wc", "hit", 2)]


def test_keys_read_are_counted_once_per_key_over_the_last_ttl_for_the_ideal_origin_calls(client: Any) -> None:
    recorder = RateRecorder(interval_s=3600)
    recorder.bind(client)
    for _ in range(50):  # a hot key read fifty times costs an ideal cache one call per TTL
        recorder.note_key("a", "hot")
    for i in range(9):
        recorder.note_key("a", f"cold-{i}")
    recorder.add("answers", "a", "hit", 59)
    recorder.add("origin_calls", "a", "ok", 10)
    recorder.flush()
    now = redis_now_ms(client) // 1000
    # The counted seconds are the ones wholly inside the TTL, the current one excluded: move the
    # flushed second one back, as the next second's read would see it.
    [read_key] = client.keys(f"{DEFAULT_KEYSPACE.prefix}:keys-read:*")
    client.rename(read_key, DEFAULT_KEYSPACE.keys_read("a", now - 1))
    [bucket] = client.keys(DEFAULT_KEYSPACE.rates_prefix + "*")
    client.rename(bucket, bucket_key(now - 1))
    client.hset(bucket_key(now - 30), "a|origin_calls|ok", 1000)  # a minute's, not the TTL's
    got = last_minute(client, ["a", "b"], ttls={"a": 5.0, "b": 5.0})["a"].as_json()
    assert got["keys_read_last_ttl"] == 10
    assert got["ideal_origin_calls_per_second"] == pytest.approx(10 / 5)
    assert got["recent_origin_calls_per_second"] == pytest.approx(10 / 5)  # the same 5 s as the ideal
    assert last_minute(client, ["a"])["a"].as_json()["ideal_origin_calls_per_second"] is None  # no TTL given
