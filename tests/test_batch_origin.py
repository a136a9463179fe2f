"""Batch origins: their configuration, the collector that gathers due keys into one call, and the
call against the demo origin's batch endpoint (real HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from demo_origin.server import OriginServer, OriginState
from shared.batch_config import MAX_URL_CHARS, BatchConfig
from shared.batch_origin import BatchCollector, BatchHttpOrigin, encode_keys
from shared.namespaces import NamespaceConfigError, build_namespace
from shared.origin import OriginError, OriginTooLarge
from shared.settings import Settings

ORIGIN = "http://127.0.0.1:9/items/{key}"


def _ns(**batch: object) -> object:
    return build_namespace("b", {"origin": ORIGIN, **batch}, Settings())


def test_a_namespace_takes_a_batch_origin_and_its_limits() -> None:
    ns = build_namespace(
        "b", {"origin": ORIGIN, "batch_origin": "http://h/items?ids={keys}", "batch_max_keys": 50}, Settings()
    )
    assert ns.batch == BatchConfig("http://h/items?ids={keys}", 50, 20.0)
    assert build_namespace("p", {"origin": ORIGIN}, Settings()).batch is None


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"batch_origin": "http://h/items?ids={key}"}, "batch_origin: must hold {keys} once"),
        ({"batch_origin": "http://h/items"}, "batch_origin: must hold {keys} once"),
        ({"batch_origin": "http://{keys}/items"}, "batch_origin: must hold {keys} once"),
        ({"batch_origin": "app.mod:func"}, "batch_origin: must be an http(s) URL"),
        ({"batch_origin": "http://h/?ids={keys}", "batch_max_keys": 0}, "batch_max_keys: must be a whole number"),
        ({"batch_origin": "http://h/?ids={keys}", "batch_max_keys": 5000}, "batch_max_keys: must be a whole number"),
        ({"batch_origin": "http://h/?ids={keys}", "batch_window_ms": -1}, "batch_window_ms: must be from 0"),
        ({"batch_max_keys": 10}, "batch_max_keys: need batch_origin"),
        ({"batch_origin": "http://h/?ids={keys}", "strategy": "naive"}, "the naive strategy"),
    ],
)
def test_a_bad_batch_origin_stops_start_up_naming_the_option(options: dict[str, object], complaint: str) -> None:
    with pytest.raises(NamespaceConfigError) as raised:
        _ns(**options)
    assert complaint in str(raised.value)


def _collector(max_keys: int = 100, window_ms: float = 50) -> BatchCollector:
    return BatchCollector(BatchConfig("http://h/items?ids={keys}", max_keys, window_ms))


def test_keys_that_join_within_the_window_share_one_batch_led_by_the_first() -> None:
    collector = _collector()
    batch, leader = collector.join("a")
    assert leader
    others = [collector.join(key) for key in ("b", "c")]
    assert all(b is batch and not led for b, led in others)
    assert collector.gather(batch) == ["a", "b", "c"]
    # Closed: the next key opens a batch of its own.
    after, leads = collector.join("d")
    assert after is not batch and leads


def test_a_full_batch_closes_at_once_and_its_leader_does_not_wait() -> None:
    collector = _collector(max_keys=3, window_ms=5000)
    batch, _ = collector.join("a")
    collector.join("b")
    collector.join("c")
    started = time.monotonic()
    assert collector.gather(batch) == ["a", "b", "c"]
    assert time.monotonic() - started < 1
    assert collector.join("d")[1]


def test_a_lone_key_waits_one_quiet_window_and_no_more() -> None:
    collector = _collector(window_ms=100)
    batch, _ = collector.join("a")
    started = time.monotonic()
    assert collector.gather(batch) == ["a"]
    assert 0.09 <= time.monotonic() - started < 1.0


def test_the_batch_waits_for_keys_announced_on_their_way() -> None:
    collector = _collector(window_ms=20)
    collector.announce(["a", "b"])
    batch, _ = collector.join("a")
    late = threading.Timer(0.2, lambda: collector.join("b"))  # past the 20 ms window
    late.start()
    assert collector.gather(batch) == ["a", "b"]
    late.join()


def test_a_batch_closes_before_its_url_grows_past_the_limit() -> None:
    collector = _collector(max_keys=1000)
    long_key = "x" * 500
    first, _ = collector.join(long_key)
    batches = {id(collector.join(f"{long_key}{i}")[0]) for i in range(30)}
    assert len(batches) > 1
    assert len(encode_keys(first.keys)) <= MAX_URL_CHARS


@pytest.fixture
def batch_origin() -> Iterator[tuple[BatchHttpOrigin, OriginState]]:
    state = OriginState(latency_ms=0, failure_rate=0)
    server = OriginServer(("127.0.0.1", 0), state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    ns = build_namespace("b", {"origin": base + "/items/{key}", "batch_origin": base + "/items?ids={keys}"}, Settings())
    try:
        yield BatchHttpOrigin(ns, 1 << 20), state
    finally:
        server.shutdown()
        server.server_close()


def test_one_call_answers_every_key_and_leaves_missing_ones_out(
    batch_origin: tuple[BatchHttpOrigin, OriginState],
) -> None:
    origin, state = batch_origin
    keys = ["a", "b,c", "d/e?f", "missing-1", "é"]
    answers = origin.fetch_many(keys, time.monotonic() + 5)
    assert state.batch_calls == 1 and state.batch_sizes == [5]
    assert answers["missing-1"] is None
    for key in ("a", "b,c", "d/e?f", "é"):
        answer = answers[key]
        assert answer is not None and not isinstance(answer, OriginError)
        assert answer.content_type == "application/json" and f'"key":"{key}"' in answer.body.decode()


def test_a_value_over_the_byte_limit_fails_its_key_alone(batch_origin: tuple[BatchHttpOrigin, OriginState]) -> None:
    origin, _ = batch_origin
    origin.value_max_bytes = 60
    answers = origin.fetch_many(["a", "a-key-whose-value-is-longer-than-sixty-bytes"], time.monotonic() + 5)
    assert isinstance(answers["a-key-whose-value-is-longer-than-sixty-bytes"], OriginTooLarge)
    assert not isinstance(answers["a"], OriginError)


def test_a_failing_batch_call_is_an_origin_error(batch_origin: tuple[BatchHttpOrigin, OriginState]) -> None:
    origin, state = batch_origin
    state.failure_rate = 1.0
    with pytest.raises(OriginError) as raised:
        origin.fetch_many(["a"], time.monotonic() + 5)
    assert raised.value.trips_breaker


def test_the_batch_call_goes_to_the_batch_origins_host_not_the_single_key_origins() -> None:
    state = OriginState(latency_ms=0, failure_rate=0)
    server = OriginServer(("127.0.0.1", 0), state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        # The single-key origin is elsewhere (nothing listens on port 9): only the batch origin answers.
        batch_url = f"http://127.0.0.1:{server.server_port}/items?ids={{keys}}"
        ns = build_namespace("b", {"origin": "http://localhost:9/one/{key}", "batch_origin": batch_url}, Settings())
        answers = BatchHttpOrigin(ns, 1 << 20).fetch_many(["a", "b"], time.monotonic() + 5)
        assert state.batch_calls == 1
        assert all(answer is not None and not isinstance(answer, OriginError) for answer in answers.values())
    finally:
        server.shutdown()
        server.server_close()
