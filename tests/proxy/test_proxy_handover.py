"""What a refresh hands to the readers that waited for an answer it may not store: the same
answer for all of them only when it may be shared. Real processes."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import requests

from tests.stack import Stack

STACK_NAMESPACES = """
[namespaces.api]
proxy = "${ORIGIN_BASE_URL}"
mount = "/api-proxy"
"""
# Long enough that every reader of a herd arrives while the one origin call runs.
STACK_ENV = {"ORIGIN_LATENCY_MS": "400"}


def fresh(query: str) -> str:
    return f"/api/h-{uuid.uuid4().hex[:12]}?{query}"


def herd(stack: Stack, target: str, headers: list[dict[str, str]]) -> list[requests.Response]:
    """One GET of `target` per header set, all at once."""
    barrier = threading.Barrier(len(headers))

    def one(h: dict[str, str]) -> requests.Response:
        barrier.wait()
        return requests.get(f"{stack.web_url}/api-proxy{target}", headers=h, timeout=15)

    with ThreadPoolExecutor(max_workers=len(headers)) as pool:
        return list(pool.map(one, headers))


def calls(stack: Stack, target: str) -> int:
    return int(stack.origin_stats()["per_key"].get("api:" + target, 0))


def test_a_private_answer_goes_to_the_reader_it_was_fetched_for_only(stack: Stack) -> None:
    target = fresh("cc=private")
    answers = herd(stack, target, [{}] * 4)
    assert {r.status_code for r in answers} == {200}
    # Each reader got an answer of its own: none was handed another's private response.
    assert sorted(r.json()["count"] for r in answers) == [1, 2, 3, 4]
    assert calls(stack, target) == 4


def test_an_unstored_varying_answer_goes_only_to_the_readers_it_matches(stack: Stack) -> None:
    target = fresh("vary=Accept-Language&cc=no-store")
    answers = herd(stack, target, [{"Accept-Language": lang} for lang in ("en", "fr", "en", "fr")])
    assert [r.json()["varied"] for r in answers] == ["en", "fr", "en", "fr"]


def test_an_unstored_answer_anyone_may_have_still_costs_a_herd_one_origin_call(stack: Stack) -> None:
    target = fresh("cc=" + quote("no-store"))
    answers = herd(stack, target, [{}] * 6)
    assert {r.json()["count"] for r in answers} == {1}
    assert calls(stack, target) == 1
