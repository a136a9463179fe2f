"""The proxied near-cache hit answered before Flask (web/proxy_fasthit.py) against the Flask proxy
path it stands in for: gunicorn tiers on one stack, one with WEB_FAST_PATH=false, answer the same
warm URLs with the same bytes (Date, Age and ttl values aside), count the same metrics; a purge
drops it from every process, and a request whose headers change the decision is left to Flask."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests

from shared.httpcache.lifetime import Policy
from shared.httpcache.reuse import Reuse, decide
from shared.proxy_store import Envelope
from tests.stack import Stack, metric, wait_until
from web.proxy_fasthit import Prepared, PreparedResponses, plain_fresh

ADMIN = "proxy-fasthit-token-0123456789abcdefghij"
STACK_NAMESPACES = """
[namespaces.api]
proxy = "${ORIGIN_BASE_URL}"
mount = "/api-proxy"
"""
# One process per tier: its near-cache is the one every request of a test meets.
STACK_ENV = {"ORIGIN_LATENCY_MS": "5", "WEB_CONCURRENCY": "1", "ADMIN_TOKEN": ADMIN}
AUTH = {"Authorization": f"Bearer {ADMIN}"}
FRESH_LONG = "cc=" + quote("max-age=600")
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")
_AGE = re.compile(rb"\r\nAge: (\d+)\r\n")
_TTL = re.compile(rb"; ttl=(-?\d+)")


@pytest.fixture(scope="module")
def tiers(stack: Stack) -> Iterator[tuple[str, str, str]]:
    """(fast-path tier, Flask-only tier, a second fast-path tier) base URLs on the one stack."""
    stack.start_web("flask-only", {"WEB_FAST_PATH": "false"})
    stack.start_web("fast2")
    yield (
        stack.web_url,
        f"http://127.0.0.1:{stack.web_ports['flask-only']}",
        f"http://127.0.0.1:{stack.web_ports['fast2']}",
    )


def url(query: str = FRESH_LONG) -> str:
    """A new proxied target under the mount (the origin's /api/ echoes the query's headers)."""
    return f"/api-proxy/api/fh-{uuid.uuid4().hex[:12]}?{query}"


def raw_get(base: str, target: str, *headers: str, method: str = "GET") -> bytes:
    """The whole answer, as bytes, to one request sent with Connection: close (read to EOF)."""
    host, port = base.removeprefix("http://").split(":")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close", *headers, "", ""]
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def timeless(answer: bytes) -> tuple[bytes, list[int]]:
    """The answer with its Date, Age and Cache-Status ttl values blanked, and those Age and ttl values."""
    numbers = [int(m) for m in _AGE.findall(answer) + _TTL.findall(answer)]
    answer = _DATE.sub(b"\r\nDate: -\r\n", answer)
    answer = _AGE.sub(b"\r\nAge: -\r\n", answer)
    return _TTL.sub(b"; ttl=-", answer), numbers


def front_hits(base: str) -> float:
    return metric(requests.get(base + "/metrics", timeout=10).text, "herdless_front_hits_total", namespace="api")


def near_hits(base: str) -> float:
    return metric(requests.get(base + "/metrics", timeout=10).text, "herdless_near_cache_total", result="hit")


def warm_on(base: str, target: str, *headers: str) -> None:
    """Read until the tier answers the target from its near-cache (its near-cache hit counter moves)."""

    def served_from_memory() -> bool:
        before = near_hits(base)
        raw_get(base, target, *headers)
        return near_hits(base) > before

    wait_until(served_from_memory, 20, f"{base}{target} from the near-cache")


def same_answer(fast: str, flask: str, target: str, *headers: str, method: str = "GET") -> tuple[bytes, bytes]:
    """The fast tier's answer and the Flask tier's, timeless, their Age and ttl values within a second."""
    answer, numbers = timeless(raw_get(fast, target, *headers, method=method))
    reference, reference_numbers = timeless(raw_get(flask, target, *headers, method=method))
    assert len(numbers) == len(reference_numbers)
    assert all(abs(a - b) <= 1 for a, b in zip(numbers, reference_numbers, strict=True))
    return answer, reference


@pytest.mark.parametrize(
    ("query", "headers", "method"),
    [
        (FRESH_LONG, (), "GET"),
        (FRESH_LONG, (), "HEAD"),
        ("cc=" + quote("public, max-age=600, must-revalidate"), (), "GET"),
        (FRESH_LONG + "&vary=Accept-Language", ("Accept-Language: en",), "GET"),
    ],
    ids=["get", "head", "must-revalidate-while-fresh", "vary-variant"],
)
def test_a_fast_proxied_hit_is_byte_for_byte_the_flask_hit(
    tiers: tuple[str, str, str], query: str, headers: tuple[str, ...], method: str
) -> None:
    fast, flask, _ = tiers
    target = url(query)
    for base in (fast, flask):
        warm_on(base, target, *headers)
    before = front_hits(fast)
    answer, reference = same_answer(fast, flask, target, *headers, method=method)
    assert front_hits(fast) == before + 1  # the fast tier answered from memory, before Flask
    assert answer == reference
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-Cache: HIT\r\n" in answer
    assert b"\r\nCache-Status: herdless; hit; ttl=-\r\n" in answer and b"\r\nAge: -\r\n" in answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert (body == b"") == (method == "HEAD")
    assert b"\r\nContent-Length: " in head


def test_fast_proxied_hits_count_what_flask_hits_count_and_web_fast_path_false_turns_them_off(
    tiers: tuple[str, str, str],
) -> None:
    fast, flask, _ = tiers
    target = url()

    def counts(base: str) -> list[float]:
        text = requests.get(base + "/metrics", timeout=10).text
        return [
            metric(text, "herdless_requests_total", namespace="api", outcome="hit"),
            metric(text, "herdless_near_cache_total", result="hit"),
            metric(text, "herdless_near_cache_total", result="miss"),
            metric(text, "herdless_request_duration_seconds_count", namespace="api"),
            metric(text, "herdless_served_age_seconds_count", namespace="api"),
            metric(text, "herdless_front_hits_total", namespace="api"),
        ]

    rose = {}
    for base in (fast, flask):
        warm_on(base, target)
        before = counts(base)
        for _ in range(10):
            assert requests.get(base + target, timeout=10).headers["X-Cache"] == "HIT"
        rose[base] = [a - b for a, b in zip(counts(base), before, strict=True)]
    assert rose[fast] == [10, 10, 0, 10, 10, 10]
    assert rose[flask] == [10, 10, 0, 10, 10, 0]  # WEB_FAST_PATH=false: every hit through Flask


def test_a_purge_through_the_admin_route_makes_the_next_get_a_miss_in_every_web_process(
    tiers: tuple[str, str, str], stack: Stack
) -> None:
    fast, _, fast2 = tiers
    target = url()
    path = target.removeprefix("/api-proxy")
    for base in (fast, fast2):
        warm_on(base, target)
    for purged_on, read_on in ((fast, fast2), (fast2, fast)):
        purge = requests.delete(f"{purged_on}/v1/proxy/api/url{path}", headers=AUTH, timeout=15)
        assert purge.status_code == 200, purge.text
        before = front_hits(read_on)
        again = requests.get(read_on + target, timeout=15)
        assert again.headers["X-Cache"] == "MISS" and "fwd=uri-miss" in again.headers["Cache-Status"]
        assert front_hits(read_on) == before
    assert int(stack.origin_stats()["per_key"]["api:" + path]) == 3


@pytest.mark.parametrize(
    ("header", "status", "x_cache"),
    [
        ("Authorization: Bearer someone", 200, "PASS"),
        ("Cookie: session=someone", 200, "PASS"),
        ("Cache-Control: no-cache", 200, "MISS"),
        ("Pragma: no-cache", 200, "MISS"),
        ("Cache-Control: max-age=0", 200, "MISS"),
        ("Range: bytes=0-3", 206, "HIT"),
        ("If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT", 304, "HIT"),
    ],
)
def test_a_request_whose_headers_change_the_decision_is_not_answered_from_memory(
    tiers: tuple[str, str, str], header: str, status: int, x_cache: str
) -> None:
    fast, _, _ = tiers
    target = url()
    warm_on(fast, target)
    before = front_hits(fast)
    answer = raw_get(fast, target, header)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert f"\r\nX-Cache: {x_cache}\r\n".encode() in answer
    assert front_hits(fast) == before


def test_an_if_none_match_is_answered_by_flask(tiers: tuple[str, str, str]) -> None:
    fast, flask, _ = tiers
    target = url()
    for base in (fast, flask):
        warm_on(base, target)
    etag = requests.get(fast + target, timeout=10).headers["ETag"]
    before = front_hits(fast)
    answer, reference = same_answer(fast, flask, target, f"If-None-Match: {etag}")
    assert answer == reference and answer.startswith(b"HTTP/1.1 304 ")
    assert front_hits(fast) == before


def test_a_vary_mismatch_is_not_answered_from_memory(tiers: tuple[str, str, str]) -> None:
    fast, _, _ = tiers
    target = url(FRESH_LONG + "&vary=Accept-Language")
    warm_on(fast, target, "Accept-Language: en")
    before = front_hits(fast)
    english = requests.get(fast + target, headers={"Accept-Language": "en"}, timeout=10)
    assert english.headers["X-Cache"] == "HIT" and english.json()["varied"] == "en"
    assert front_hits(fast) == before + 1
    for other in ({"Accept-Language": "fr"}, {}):
        answer = requests.get(fast + target, headers=other, timeout=10)
        assert answer.headers["X-Cache"] == "MISS" and answer.json()["varied"] == other.get("Accept-Language")
        assert front_hits(fast) == before + 1


@pytest.mark.parametrize(
    "query",
    ["cc=" + quote("no-cache, max-age=600"), FRESH_LONG + "&status=404"],
    ids=["response-no-cache", "stored-404"],
)
def test_a_stored_response_that_is_not_a_plain_fresh_200_is_answered_by_flask(
    tiers: tuple[str, str, str], query: str
) -> None:
    fast, flask, _ = tiers
    target = url(query)
    for base in (fast, flask):
        for _ in range(3):
            requests.get(base + target, timeout=15)
    before = front_hits(fast)
    answer = raw_get(fast, target)
    assert front_hits(fast) == before
    if "404" in query:  # the stored 404 answers both tiers alike
        assert timeless(answer)[0] == timeless(raw_get(flask, target))[0]
        assert answer.startswith(b"HTTP/1.1 404 ") and b"\r\nX-Cache: HIT\r\n" in answer
    else:  # no-cache: revalidated on every reuse
        assert b"fwd=stale" in answer


LAST_MODIFIED = "Thu, 01 Jan 2026 00:00:00 GMT"
DATE = "Sun, 01 Mar 2026 00:00:00 GMT"  # 59 days after LAST_MODIFIED: a heuristic life of 5.9 days
STORED_AT = 1772323200.0  # DATE as POSIX seconds


@pytest.mark.parametrize(
    "response_headers",
    [
        (("Cache-Control", "max-age=60"),),
        (("Cache-Control", "max-age=60, must-revalidate"),),
        (("Cache-Control", "no-cache, max-age=60"),),
        (("Cache-Control", 'no-cache="Set-Cookie", max-age=60'),),
        (("Cache-Control", "max-age=60, s-maxage=5"),),
        (("Cache-Control", "max-age=60"), ("Age", "50")),
        (("Cache-Control", "max-age=60"), ("Surrogate-Control", "max-age=5")),
        (("Cache-Control", "max-age=0"),),
        (("Date", DATE), ("Expires", "Sun, 01 Mar 2026 00:00:30 GMT")),
        (("Date", DATE), ("Last-Modified", LAST_MODIFIED)),
        (("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")),
        (("Cache-Control", "max-age=60"), ("Vary", "*")),
        (),
    ],
)
@pytest.mark.parametrize("request_headers", [(), (("Accept-Language", "en"),), (("Accept-Language", "fr"),)])
@pytest.mark.parametrize("later", [0.0, 4.5, 9.99, 10.0, 30.0, 59.5, 61.0, 6 * 86400.0])
def test_plain_fresh_is_decides_fresh_for_a_request_without_directives(
    response_headers: tuple[tuple[str, str], ...], request_headers: tuple[tuple[str, str], ...], later: float
) -> None:
    envelope = Envelope(
        "response", "/x", 200, response_headers, b"body", STORED_AT - 0.2, STORED_AT, (("Accept-Language", "en"),)
    )
    policy = Policy(default_ttl=10.0, stale_ttl=30.0)
    now = STORED_AT + later
    expected = decide("GET", request_headers, envelope.stored_response(), now, policy)
    got = plain_fresh(Prepared.of("api", envelope, policy), request_headers, now)
    if expected.action is Reuse.FRESH:
        assert got == (expected.age, expected.ttl)
    else:
        assert got is None


def test_prepared_responses_stay_within_their_count_and_byte_budgets() -> None:
    def value(i: int, size: int) -> bytes:
        return Envelope("response", f"/{i}", 200, (("Cache-Control", "max-age=60"),), b"x" * size).encode()

    prepared = PreparedResponses(max_entries=3, max_bytes=16_000)
    kept = [value(i, 100) for i in range(5)]
    for v in kept:
        assert prepared.of("api", Policy(), v) is not None
    assert len(prepared) == 3 and prepared.bytes == 2 * sum(len(v) for v in kept[2:])
    big = value(9, 900)  # over a sixteenth of the budget: prepared, never kept
    assert prepared.of("api", Policy(), big) is not None and len(prepared) == 3
    prepared = PreparedResponses(max_entries=100, max_bytes=16_000)
    for i in range(100):
        prepared.of("api", Policy(), value(i, 300))
    assert 16_000 - 2 * len(value(0, 300)) < prepared.bytes <= 16_000
    marker = Envelope("vary", "/m", vary=("accept",)).encode()
    assert prepared.of("api", Policy(), marker) is None and prepared.of("api", Policy(), b"not an envelope") is None
