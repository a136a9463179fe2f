"""The fast path for near-cache hits (web/fasthit.py) against the Flask read route it stands in for:
two gunicorn tiers on one stack, one with WEB_FAST_PATH=false, answer the same warm keys with the
same bytes (Date aside), count the same metrics, and the fast path claims nothing it does not own."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
import requests
from flask import Flask

from shared.settings import Settings
from tests.stack import Stack, metric, wait_until
from web.fasthit import owns_cache_gets

STACK_NAMESPACES = """
[namespaces.fh]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 600

[namespaces.fh-naive]
strategy = "naive"
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 600
"""
# One process per tier: its near-cache is the one every request of a test meets.
STACK_ENV = {"ORIGIN_LATENCY_MS": "5", "NEGATIVE_TTL_SECONDS": "600", "WEB_CONCURRENCY": "1"}
DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


@pytest.fixture(scope="module")
def tiers(stack: Stack) -> Iterator[tuple[str, str]]:
    """(fast-path tier, Flask-only tier) base URLs on the one stack."""
    stack.start_web("flask-only", {"WEB_FAST_PATH": "false"})
    yield stack.web_url, f"http://127.0.0.1:{stack.web_ports['flask-only']}"


def raw_get(base: str, target: str, *headers: str, method: str = "GET") -> bytes:
    """The whole answer, as bytes, to one request sent with Connection: close (read to EOF)."""
    host, port = base.removeprefix("http://").split(":")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close", *headers, "", ""]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return DATE.sub(b"\r\nDate: -\r\n", b"".join(chunks))


def near_hits(base: str) -> float:
    return metric(requests.get(base + "/metrics", timeout=10).text, "herdless_near_cache_total", result="hit")


def warm_on(base: str, target: str) -> None:
    """Read until the tier answers from its near-cache (its near-cache hit counter moves)."""

    def served_from_memory() -> bool:
        before = near_hits(base)
        requests.get(base + target, timeout=10)
        return near_hits(base) > before

    wait_until(served_from_memory, 20, f"{base}{target} from the near-cache")


def same_answer(fast: str, flask: str, target: str, *headers: str, method: str = "GET") -> tuple[bytes, bytes]:
    """The fast tier's answer and the Flask tier's, taken fast, Flask, fast: when the two fast
    answers agree no second boundary (Age, max-age) fell between them, so Flask's must agree too."""
    for _ in range(10):
        first = raw_get(fast, target, *headers, method=method)
        middle = raw_get(flask, target, *headers, method=method)
        last = raw_get(fast, target, *headers, method=method)
        if first == last:
            return first, middle
    raise AssertionError(f"{target}: the fast tier never answered twice alike")


@pytest.mark.parametrize(
    "key_path",
    ["plain-key", "a%2Fb%20c", "%C3%A9t%C3%A9", "k!$&'()*+,;=:@.~_-"],
    ids=["plain", "escaped", "utf8", "punctuation"],
)
def test_a_fast_hit_is_byte_for_byte_the_flask_hit(tiers: tuple[str, str], key_path: str) -> None:
    fast, flask = tiers
    target = f"/v1/cache/fh/{key_path}"
    for base in tiers:
        warm_on(base, target)
    before = near_hits(fast)
    answer, reference = same_answer(fast, flask, target)
    assert answer == reference
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-Cache: HIT\r\n" in answer
    assert b"\r\nETag: " in answer and b"\r\nAge: " in answer and b"\r\nCache-Control: max-age=" in answer
    assert near_hits(fast) >= before + 2  # the fast tier answered from memory


def test_a_conditional_fast_hit_is_the_flask_304(tiers: tuple[str, str]) -> None:
    fast, flask = tiers
    target = "/v1/cache/fh/conditional"
    for base in tiers:
        warm_on(base, target)
    etag = requests.get(fast + target, timeout=10).headers["ETag"]
    answer, reference = same_answer(fast, flask, target, f'If-None-Match: W/{etag}, "other"')
    assert answer == reference and answer.startswith(b"HTTP/1.1 304 NOT MODIFIED\r\n")
    other, reference = same_answer(fast, flask, target, 'If-None-Match: "not-this-one"')
    assert other == reference and other.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    ("target", "method"),
    [
        ("/v1/cache/fh/missing-negative", "GET"),  # a cached 404: left to the route
        ("/v1/cache/fh/head-key", "HEAD"),
        ("/v1/cache/fh/query-key?x=1", "GET"),  # 400 query_not_allowed
        ("/v1/cache/fh/bad%zzkey", "GET"),  # 400 invalid_key
        ("/v1/cache/fh/%0Akey", "GET"),  # 400: a control character
        ("/v1/cache/fh/two/segments", "GET"),  # 404
        ("/v1/cache/nope/key", "GET"),  # 404 unknown_namespace
        ("/v1/cache/fh-naive/key", "GET"),  # naive: never the near-cache
    ],
)
def test_what_the_fast_path_does_not_own_is_answered_as_flask_does(
    tiers: tuple[str, str], target: str, method: str
) -> None:
    fast, flask = tiers
    for base in tiers:  # twice each: whatever the route would put in the near-cache is there
        for _ in range(2):
            raw_get(base, target, method=method)
    answer, reference = same_answer(fast, flask, target, method=method)
    assert answer == reference


def test_fast_hits_count_what_flask_hits_count(tiers: tuple[str, str]) -> None:
    fast, _ = tiers
    target = "/v1/cache/fh/counted"
    warm_on(fast, target)

    def counts() -> tuple[float, ...]:
        text = requests.get(fast + "/metrics", timeout=10).text
        return (
            metric(text, "herdless_requests_total", namespace="fh", outcome="hit"),
            metric(text, "herdless_requests_total", namespace="fh", outcome="not_modified"),
            metric(text, "herdless_near_cache_total", result="hit"),
            metric(text, "herdless_near_cache_total", result="miss"),
            metric(text, "herdless_request_duration_seconds_count", namespace="fh"),
            metric(text, "herdless_served_age_seconds_count", namespace="fh"),
        )

    before = counts()
    etag = requests.get(fast + target, timeout=10).headers["ETag"]
    for _ in range(9):
        assert requests.get(fast + target, timeout=10).headers["X-Cache"] == "HIT"
    assert requests.get(fast + target, headers={"If-None-Match": etag}, timeout=10).status_code == 304
    after = counts()
    assert [a - b for a, b in zip(after, before, strict=True)] == [10, 1, 11, 0, 11, 11]


def test_the_fast_path_claims_nothing_when_another_route_lives_under_the_cache_prefix() -> None:
    from web.http import AnythingConverter
    from web.routes import bp

    app = Flask("t")
    app.url_map.converters["anything"] = AnythingConverter
    app.register_blueprint(bp)
    assert owns_cache_gets(app)
    app.add_url_rule("/v1/cache/mounted/<path:rest>", "proxy", lambda rest: "")
    assert not owns_cache_gets(app)


def test_web_fast_path_is_a_setting() -> None:
    assert Settings().web_fast_path is True
    assert Settings(web_fast_path="false").web_fast_path is False  # type: ignore[arg-type]


AGE_AND_MAX_AGE = re.compile(rb"(\r\nAge: |max-age=)[0-9]+")


def test_cold_waiters_the_front_door_joins_get_the_flask_waiters_bytes(stack: Stack, tiers: tuple[str, str]) -> None:
    # One cold key read by 12 clients on each tier at once, the origin slow enough for all of
    # them to wait: the fast tier's joiners are answered before Flask (counted), with the bytes
    # the Flask-only tier's joiners get (Date, Age and max-age aside: seconds may turn between).
    import threading

    fast, flask = tiers
    target = "/v1/cache/fh/herd-joined"

    def joined() -> float:
        text = requests.get(fast + "/metrics", timeout=10).text
        return metric(text, "herdless_front_joined_total", namespace="fh")

    before = joined()
    answers: dict[str, list[bytes]] = {fast: [], flask: []}
    stack.origin_config(latency_ms=600)
    try:
        readers = [
            threading.Thread(target=lambda base=base: answers[base].append(raw_get(base, target)))
            for base in (fast, flask)
            for _ in range(12)
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(20)
    finally:
        stack.origin_config(latency_ms=5)
    normalised = {base: {AGE_AND_MAX_AGE.sub(rb"\1-", a) for a in got} for base, got in answers.items()}
    assert len(answers[fast]) == len(answers[flask]) == 12
    assert normalised[fast] == normalised[flask], normalised
    (answer,) = normalised[fast]
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-Cache: MISS\r\n" in answer
    assert joined() >= before + 1  # the fast tier's joiners were answered by its front door
    assert stack.origin_stats()["per_key"]["herd-joined"] == 1


def _header_names(answer: bytes) -> list[bytes]:
    head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    return [head[0], *(line.split(b":", 1)[0] for line in head[1:])]


def test_a_read_the_front_door_admits_is_made_and_answered_there_as_flask_answers_it(
    tiers: tuple[str, str],
) -> None:
    # A cold key read alone (its reader wins the lease, waits, is served MISS) is read by the
    # front door itself (counted) and answered with Flask's status line and headers, in order.
    fast, flask = tiers

    def reads() -> float:
        text = requests.get(fast + "/metrics", timeout=10).text
        return metric(text, "herdless_front_reads_total", namespace="fh")

    before = reads()
    answer = raw_get(fast, "/v1/cache/fh/front-read-a")
    reference = raw_get(flask, "/v1/cache/fh/front-read-b")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-Cache: MISS\r\n" in answer
    assert _header_names(answer) == _header_names(reference)
    assert reads() == before + 1
    # What the front door does not render itself (a key the route refuses) is still the route's.
    bad = "/v1/cache/fh/" + "k" * 2000
    assert raw_get(fast, bad).split(b"\r\n")[0] == raw_get(flask, bad).split(b"\r\n")[0]
    assert reads() == before + 1
