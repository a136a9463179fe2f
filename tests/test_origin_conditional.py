"""Origin adapters revalidate: an HTTP origin is asked with If-None-Match / If-Modified-Since and
its 304 comes back as NotModified; a callable opts in through a `validator` keyword."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from demo_origin import OriginServer, OriginState
from shared.namespaces import build_namespace
from shared.origin import (
    NOT_MODIFIED,
    HttpOrigin,
    NotModified,
    OriginError,
    OriginResponse,
    OriginValue,
    Validators,
    make_origin,
)
from shared.settings import Settings


@pytest.fixture
def demo_origin() -> Iterator[tuple[HttpOrigin, OriginState]]:
    state = OriginState(latency_ms=0, failure_rate=0)
    server = OriginServer(("127.0.0.1", 0), state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    ns = build_namespace("t", {"origin": f"http://127.0.0.1:{server.server_port}/items/{{key}}"}, Settings())
    origin = make_origin(ns, 1 << 20)
    assert isinstance(origin, HttpOrigin)
    try:
        yield origin, state
    finally:
        server.shutdown()
        server.server_close()


def test_an_etag_answered_304_comes_back_as_not_modified(demo_origin: tuple[HttpOrigin, OriginState]) -> None:
    origin, state = demo_origin
    with state.lock:
        state.configure_key("k", {"value": {"v": 1}, "cache_control": "max-age=5"})
    first = origin.fetch("k")
    assert isinstance(first, OriginResponse) and first.validators.etag and first.cache.cache_control == "max-age=5"
    again = origin.fetch("k", validators=Validators(etag=first.validators.etag))
    assert isinstance(again, NotModified)
    assert again.validators.etag == first.validators.etag and again.cache.cache_control == "max-age=5"
    assert state.bodies_per_key == {"k": 1} and state.not_modified_per_key == {"k": 1}


def test_if_modified_since_alone_revalidates_too(demo_origin: tuple[HttpOrigin, OriginState]) -> None:
    origin, state = demo_origin
    with state.lock:
        state.configure_key("k", {"value": "v1"})
    first = origin.fetch("k")
    assert isinstance(first, OriginResponse) and first.validators.last_modified
    assert isinstance(
        origin.fetch("k", validators=Validators(last_modified=first.validators.last_modified)), NotModified
    )
    with state.lock:
        state.configure_key("k", {"value": "v2"})  # a new value has a later Last-Modified
    changed = origin.fetch("k", validators=Validators(last_modified=first.validators.last_modified))
    assert isinstance(changed, OriginResponse) and changed.body == b'"v2"'


def test_a_stale_etag_gets_the_new_body(demo_origin: tuple[HttpOrigin, OriginState]) -> None:
    origin, state = demo_origin
    with state.lock:
        state.configure_key("k", {"value": "v2"})
    answer = origin.fetch("k", validators=Validators(etag='"some-older-version"'))
    assert isinstance(answer, OriginResponse) and answer.body == b'"v2"'


# -- callables --------------------------------------------------------------------------------

SEEN: list[Any] = []


def conditional(key: str, validator: str | None = None) -> Any:
    SEEN.append(validator)
    return NOT_MODIFIED if validator == '"v1"' else OriginValue({"key": key}, etag='"v1"', cache_control="max-age=9")


def unconditional(key: str) -> Any:
    SEEN.append(key)
    return NOT_MODIFIED


def callable_origin(name: str) -> Any:
    return make_origin(build_namespace("c", {"origin": f"tests.test_origin_conditional:{name}"}, Settings()), 1 << 20)


def test_a_callable_with_a_validator_parameter_is_passed_the_stored_etag() -> None:
    SEEN.clear()
    origin = callable_origin("conditional")
    assert origin.conditional
    first = origin.fetch("k")
    assert isinstance(first, OriginResponse) and first.body == b'{"key":"k"}'
    assert first.validators == Validators(etag='"v1"') and first.cache.cache_control == "max-age=9"
    assert isinstance(origin.fetch("k", validators=first.validators), NotModified)
    assert SEEN == [None, '"v1"']


def test_a_callable_without_one_is_called_as_before_and_may_not_answer_not_modified() -> None:
    SEEN.clear()
    origin = callable_origin("unconditional")
    assert not origin.conditional
    with pytest.raises(OriginError, match="NOT_MODIFIED"):
        origin.fetch("k", validators=Validators(etag='"v1"'))
    assert SEEN == ["k"]
