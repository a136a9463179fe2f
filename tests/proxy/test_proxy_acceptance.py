"""Issue 20's acceptance, on real processes: two gunicorn web masters on one Redis, a Celery worker,
the demo origin's /api/ routes behind a proxy namespace."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
import requests

from tests.stack import Stack, wait_until

STACK_NAMESPACES = """
[namespaces.api]
proxy = "${ORIGIN_BASE_URL}"
mount = "/api-proxy"
"""
# Long enough that the whole herd arrives while the one origin call runs.
STACK_ENV = {"ORIGIN_LATENCY_MS": "300", "WEB_CONCURRENCY": "2"}


@pytest.fixture(scope="module")
def two_nodes(stack: Stack) -> list[str]:
    """The stack's web master and a second one on the same Redis."""
    stack.start_web("web2")
    return [f"http://127.0.0.1:{stack.web_ports[name]}" for name in ("web", "web2")]


def fresh(path: str = "/api/x", query: str = "") -> str:
    """A never-seen target under the demo origin's /api/ (path and query, as the origin sees them)."""
    return f"{path}-{uuid.uuid4().hex[:12]}" + (f"?{query}" if query else "")


def calls(stack: Stack, target: str) -> int:
    return int(stack.origin_stats()["per_key"].get("api:" + target, 0))


def get(base: str, target: str, **kwargs: object) -> requests.Response:
    kwargs.setdefault("timeout", 15)
    return requests.get(f"{base}/api-proxy{target}", **kwargs)  # type: ignore[arg-type]


def test_a_cold_herd_of_300_over_two_web_nodes_is_one_origin_call_and_all_get_its_answer(
    stack: Stack, two_nodes: list[str]
) -> None:
    target = fresh("/api/herd", "currency=EUR&channel=web&cc=" + quote("max-age=60"))
    clients = 300
    barrier = threading.Barrier(clients)

    def one(i: int) -> requests.Response:
        barrier.wait()
        return get(two_nodes[i % 2], target, timeout=30)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(one, range(clients)))
    assert calls(stack, target) == 1
    assert {r.status_code for r in answers} == {200}
    assert len({r.content for r in answers}) == 1
    first = answers[0]
    assert first.json()["target"] == target  # the origin saw the target byte for byte
    for r in answers:
        assert r.headers["X-Origin"] == "demo"
        assert r.headers["Cache-Control"] == "max-age=60"
        assert r.headers["ETag"] == first.headers["ETag"]
        assert r.headers["Content-Type"] == "application/json"
        assert "herdless" in r.headers["Cache-Status"]


def test_query_strings_are_separate_entries(stack: Stack, two_nodes: list[str]) -> None:
    base = fresh("/api/q")
    one, two = f"{base}?a=1&cc=max-age%3D60", f"{base}?a=2&cc=max-age%3D60"
    first_one, first_two = get(two_nodes[0], one), get(two_nodes[1], two)
    assert first_one.json()["target"] == one and first_two.json()["target"] == two
    again_one, again_two = get(two_nodes[1], one), get(two_nodes[0], two)
    assert again_one.headers["X-Cache"] == "HIT" and again_two.headers["X-Cache"] == "HIT"
    assert again_one.content == first_one.content and again_two.content == first_two.content
    assert calls(stack, one) == 1 and calls(stack, two) == 1


def test_vary_accept_language_keeps_one_variant_per_language(stack: Stack, two_nodes: list[str]) -> None:
    target = fresh("/api/lang", "vary=Accept-Language&cc=" + quote("max-age=60"))
    en = get(two_nodes[0], target, headers={"Accept-Language": "en"})
    fr = get(two_nodes[1], target, headers={"Accept-Language": "fr"})
    assert (en.json()["varied"], fr.json()["varied"]) == ("en", "fr")
    assert en.headers["Vary"] == "Accept-Language"
    for node in two_nodes:
        for lang in ("en", "fr"):
            again = get(node, target, headers={"Accept-Language": lang})
            assert again.headers["X-Cache"] == "HIT", (node, lang)
            assert again.json()["varied"] == lang
    assert calls(stack, target) == 2
    de = get(two_nodes[0], target, headers={"Accept-Language": "de"})
    assert de.json()["varied"] == "de" and calls(stack, target) == 3


def test_an_authorization_request_is_never_answered_from_another_clients_response(
    stack: Stack, two_nodes: list[str]
) -> None:
    target = fresh("/api/private", "cc=" + quote("public, max-age=60"))
    anonymous = get(two_nodes[0], target)
    assert anonymous.json()["count"] == 1
    assert get(two_nodes[0], target).headers["X-Cache"] == "HIT"
    alice = get(two_nodes[0], target, headers={"Authorization": "Bearer alice"})
    bob = get(two_nodes[1], target, headers={"Authorization": "Bearer bob"})
    alice_again = get(two_nodes[1], target, headers={"Authorization": "Bearer alice"})
    # Each went to the origin with its own credentials: none got a stored response.
    assert [r.json()["count"] for r in (alice, bob, alice_again)] == [2, 3, 4]
    assert {r.headers["X-Cache"] for r in (alice, bob, alice_again)} == {"PASS"}
    assert stack.origin_stats()["headers"]["authorization"] == {"Bearer alice": 2, "Bearer bob": 1}
    # Nor was an authorized answer stored for anyone else.
    assert get(two_nodes[1], target).json()["count"] == 1


def test_a_post_makes_the_next_get_go_to_the_origin(stack: Stack, two_nodes: list[str]) -> None:
    target = fresh("/api/order", "cc=" + quote("max-age=600"))
    assert get(two_nodes[0], target).json()["count"] == 1
    assert get(two_nodes[1], target).headers["X-Cache"] == "HIT"
    posted = requests.post(f"{two_nodes[0]}/api-proxy{target}", data=b'{"qty": 2}', timeout=15)
    assert posted.status_code == 201 and posted.json()["method"] == "POST"
    after = get(two_nodes[1], target)
    assert after.headers["X-Cache"] == "MISS" and after.json()["count"] == 3
    # A same-origin Location named by a successful unsafe request is invalidated too.
    other = fresh("/api/other", "cc=" + quote("max-age=600"))
    assert get(two_nodes[0], other).json()["count"] == 1
    location = quote(other, safe="")
    requests.delete(f"{two_nodes[1]}/api-proxy{fresh('/api/del')}?location={location}", timeout=15)
    assert get(two_nodes[0], other).json()["count"] == 2


def test_stale_while_revalidate_serves_stale_at_once_with_one_worker_refresh_per_max_age(
    stack: Stack, two_nodes: list[str]
) -> None:
    target = fresh("/api/swr", "cc=" + quote("max-age=2, stale-while-revalidate=30"))
    assert get(two_nodes[0], target).status_code == 200
    stop = time.monotonic() + 9
    latencies: list[float] = []
    outcomes: list[str] = []
    while time.monotonic() < stop:
        for node in two_nodes:
            t0 = time.perf_counter()
            r = get(node, target)
            latencies.append(time.perf_counter() - t0)
            outcomes.append(r.headers["X-Cache"])
            assert r.status_code == 200
        time.sleep(0.02)
    made = calls(stack, target)
    # 9 s past the first call at one refresh per 2 s of max-age (less XFetch's head start of
    # d = 0.3 s on average): 5, give or take the edges.
    assert 4 <= made <= 8, made
    assert "STALE" in outcomes
    # The origin takes 300 ms: no read waited for it.
    assert max(latencies) < 0.25, sorted(latencies)[-5:]


def _raw(base: str, request: bytes) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(head.split(b" ")[1]), body


HOSTILE = [
    b"GET http://evil.example/api-proxy/api/evil HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    b"GET //evil.example/api-proxy/api/evil HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api-proxy//evil.example/api/evil HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api-proxy/%2e%2e/%2e%2e/evil HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api-proxy/api/..%2fevil HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api-proxy/api\\..\\evil HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api-proxy/@evil.example/api/evil HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api-proxy/api/evil%0d%0aHost:%20evil.example HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api-proxy/api/evil?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api-proxy/api/evil HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", HOSTILE, ids=lambda b: b[:48].decode("latin-1"))
def test_a_hostile_target_reaches_no_other_host_answers_4xx_json_and_is_not_stored(
    stack: Stack, two_nodes: list[str], request_bytes: bytes
) -> None:
    client = stack.redis.client(db=stack.db)
    before = set(client.keys("*{api:*"))
    calls_before = stack.origin_stats()["calls"]
    status, body = _raw(two_nodes[0], request_bytes)
    assert 400 <= status < 500, (status, body[:200])
    assert body.startswith(b"{") and b'"error"' in body, body[:200]
    assert stack.origin_stats()["calls"] == calls_before
    assert set(client.keys("*{api:*")) - before == set()  # nothing new (an older tombstone may expire)


def test_a_raw_line_break_in_the_target_is_refused_by_gunicorn_and_reaches_nobody(
    stack: Stack, two_nodes: list[str]
) -> None:
    calls_before = stack.origin_stats()["calls"]
    status, _ = _raw(two_nodes[0], b"GET /api-proxy/api/evil\r\nHost: evil.example HTTP/1.1\r\nHost: x\r\n\r\n")
    assert 400 <= status < 500
    wait_until(lambda: True, 1, "nothing")
    assert stack.origin_stats()["calls"] == calls_before
