"""A proxy namespace that forwards a credential (forward_headers): each credential's responses are
its own, also when they vary, and a purge of the URL reaches them all. Real processes."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import requests

from tests.stack import Stack

STACK_NAMESPACES = """
[namespaces.api]
proxy = "${ORIGIN_BASE_URL}"
mount = "/api-proxy"
forward_headers = ["Authorization"]
"""
# One web process: it learns a URL's Vary fields from the first read of its marker, whoever made it.
STACK_ENV = {"ORIGIN_LATENCY_MS": "20", "WEB_CONCURRENCY": "1"}
ALICE = {"Authorization": "Bearer alice", "Accept-Language": "en"}


def fresh(query: str) -> str:
    return f"/api/c-{uuid.uuid4().hex[:12]}?{query}"


def get(stack: Stack, target: str, **kwargs: object) -> requests.Response:
    kwargs.setdefault("timeout", 15)
    return requests.get(f"{stack.web_url}/api-proxy{target}", **kwargs)  # type: ignore[arg-type]


def test_a_varying_response_to_a_forwarded_credential_never_answers_a_request_without_it(stack: Stack) -> None:
    target = fresh("vary=Accept-Language&cc=" + quote("s-maxage=60"))
    alice = get(stack, target, headers=ALICE)
    assert alice.status_code == 200 and alice.json()["varied"] == "en"
    assert get(stack, target, headers=ALICE).headers["X-Cache"] == "HIT"
    anonymous = get(stack, target, headers={"Accept-Language": "en"})
    # Not Alice's stored answer: the origin was asked, without her credential.
    assert anonymous.headers["X-Cache"] == "MISS"
    assert anonymous.json()["count"] == alice.json()["count"] + 1
    assert stack.origin_stats()["headers"]["authorization"].get("Bearer alice") == alice.json()["count"]


def test_a_successful_post_purges_the_varying_responses_stored_for_a_forwarded_credential(stack: Stack) -> None:
    target = fresh("vary=Accept-Language&cc=" + quote("s-maxage=600"))
    first = get(stack, target, headers=ALICE)
    assert get(stack, target, headers=ALICE).headers["X-Cache"] == "HIT"
    posted = requests.post(f"{stack.web_url}/api-proxy{target}", data=b"{}", timeout=15)
    assert posted.status_code == 201
    after = get(stack, target, headers=ALICE)
    assert after.headers["X-Cache"] == "MISS" and after.json()["count"] > first.json()["count"]
