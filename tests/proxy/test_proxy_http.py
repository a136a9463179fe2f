"""A proxy namespace's HTTP semantics on real processes: HEAD, conditionals both ways, request and
response directives, and the admin routes of a proxied URL."""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

import requests

from tests.stack import Stack, wait_until

ADMIN = "proxy-admin-token-0123456789abcdefghij"
STACK_NAMESPACES = """
[namespaces.api]
proxy = "${ORIGIN_BASE_URL}"
mount = "/api-proxy"
"""
STACK_ENV = {"ORIGIN_LATENCY_MS": "50", "ADMIN_TOKEN": ADMIN}
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def fresh(query: str = "") -> str:
    return f"/api/h-{uuid.uuid4().hex[:12]}" + (f"?{query}" if query else "")


def item(stack: Stack, cache_control: str) -> tuple[str, str]:
    """A demo /items key with a fixed value (so the origin answers 304 to its ETag): (key, target)."""
    key = f"k-{uuid.uuid4().hex[:10]}"
    stack.origin_config(keys={key: {"value": {"v": key}, "cache_control": cache_control}})
    return key, f"/items/{key}"


def get(stack: Stack, target: str, **kwargs: object) -> requests.Response:
    kwargs.setdefault("timeout", 15)
    return requests.get(f"{stack.web_url}/api-proxy{target}", **kwargs)  # type: ignore[arg-type]


def calls(stack: Stack, target: str) -> int:
    return int(stack.origin_stats()["per_key"].get("api:" + target, 0))


def test_head_is_answered_from_the_stored_get(stack: Stack) -> None:
    target = fresh("cc=" + quote("max-age=60"))
    full = get(stack, target)
    head = requests.head(f"{stack.web_url}/api-proxy{target}", timeout=15)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["ETag"] == full.headers["ETag"]
    assert head.headers["Content-Length"] == str(len(full.content))
    assert head.headers["X-Cache"] == "HIT" and calls(stack, target) == 1


def test_a_forwarded_head_keeps_the_origins_content_length(stack: Stack) -> None:
    target = fresh("cc=" + quote("max-age=60"))
    full = requests.get(f"{stack.web_url}/api-proxy{target}", headers={"Cookie": "a=1"}, timeout=15)
    head = requests.head(f"{stack.web_url}/api-proxy{target}", headers={"Cookie": "a=1"}, timeout=15)
    assert head.status_code == 200 and head.headers["X-Cache"] == "PASS"
    # The origin's answer names the method, counts and times the call: a few bytes off the GET's.
    assert abs(int(head.headers["Content-Length"]) - len(full.content)) <= 8


def test_the_read_that_waited_for_a_varying_answer_is_a_miss_with_the_origins_age(stack: Stack) -> None:
    target = fresh("vary=Accept-Language&cc=" + quote("max-age=60"))
    first = get(stack, target, headers={"Accept-Language": "en"})
    # Fetched for this very read (through the URL's vary marker): not a hit, no Age of ours.
    assert first.headers["X-Cache"] == "MISS" and "fwd=uri-miss" in first.headers["Cache-Status"]
    assert "Age" not in first.headers
    again = get(stack, target, headers={"Accept-Language": "en"})
    assert again.headers["X-Cache"] == "HIT" and "Age" in again.headers and calls(stack, target) == 1


def test_a_cached_read_never_hands_the_origin_a_clients_host_or_method_override(stack: Stack) -> None:
    # Headers an origin may build its answer from without saying Vary: the stored answer would
    # carry one client's choice to every other (web cache poisoning).
    target = fresh("cc=" + quote("max-age=60"))
    hostile = {
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "host=evil.example;proto=http",
        "X-Original-URL": "/admin",
        "X-HTTP-Method-Override": "DELETE",
        "X-Custom": "kept",
    }
    assert get(stack, target, headers=hostile).status_code == 200
    seen = stack.origin_stats()["headers"]
    assert seen["x-custom"].get("kept") == 1  # end-to-end headers are replayed
    for name in ("x-forwarded-host", "forwarded", "x-original-url", "x-http-method-override"):
        assert name not in seen, name


def test_a_range_is_cut_from_the_stored_response_with_the_fields_of_every_cached_answer(stack: Stack) -> None:
    target = fresh("cc=" + quote("max-age=60"))
    full = get(stack, target)
    part = get(stack, target, headers={"Range": "bytes=0-4"})
    assert part.status_code == 206 and part.content == full.content[:5]
    assert part.headers["Content-Range"] == f"bytes 0-4/{len(full.content)}"
    past = get(stack, target, headers={"Range": f"bytes={len(full.content) + 10}-"})
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{len(full.content)}"
    for answer in (part, past):
        assert answer.headers["X-Cache"] == "HIT" and "Age" in answer.headers
        assert "herdless; hit" in answer.headers["Cache-Status"]
    assert calls(stack, target) == 1


def test_a_client_conditional_the_stored_response_satisfies_is_answered_304_from_the_cache(stack: Stack) -> None:
    target = fresh("cc=" + quote("max-age=60"))
    etag = get(stack, target).headers["ETag"]
    again = get(stack, target, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == etag and "hit" in again.headers["Cache-Status"]
    assert get(stack, target, headers={"If-None-Match": '"other"'}).status_code == 200
    assert calls(stack, target) == 1


def test_a_stale_response_with_validators_is_revalidated_by_a_conditional_refresh(stack: Stack) -> None:
    key, target = item(stack, "max-age=1")
    first = get(stack, target)
    assert first.status_code == 200 and first.json() == {"v": key}
    time.sleep(1.2)
    again = get(stack, target)
    assert again.status_code == 200 and again.json() == {"v": key}
    assert "fwd=stale" in again.headers["Cache-Status"]
    stats = stack.origin_stats()
    assert stats["bodies_per_key"][key] == 1 and stats["not_modified_per_key"][key] == 1
    assert get(stack, target).headers["X-Cache"] == "HIT"  # the 304 gave it a new max-age


def test_request_no_cache_revalidates_and_response_no_cache_revalidates_every_reuse(stack: Stack) -> None:
    key, target = item(stack, "max-age=60")
    get(stack, target)
    assert get(stack, target).headers["X-Cache"] == "HIT"
    forced = get(stack, target, headers={"Cache-Control": "no-cache"})
    assert forced.status_code == 200 and "fwd=request" in forced.headers["Cache-Status"]
    assert stack.origin_stats()["not_modified_per_key"][key] == 1
    key, target = item(stack, "no-cache")
    for _ in range(3):
        r = get(stack, target)
        assert r.status_code == 200 and r.json() == {"v": key}
    stats = stack.origin_stats()
    assert stats["bodies_per_key"][key] == 1 and stats["not_modified_per_key"][key] == 2


def test_only_if_cached_no_store_and_vary_star(stack: Stack) -> None:
    target = fresh("cc=" + quote("max-age=60"))
    assert get(stack, target, headers={"Cache-Control": "only-if-cached"}).status_code == 504
    assert calls(stack, target) == 0
    assert get(stack, target, headers={"Cache-Control": "no-store"}).headers["X-Cache"] == "PASS"
    assert get(stack, target).headers["X-Cache"] == "MISS"  # the no-store answer was not stored
    star = fresh("vary=*&cc=" + quote("max-age=60"))
    assert [get(stack, star).json()["count"] for _ in range(2)] == [1, 2]


def test_admin_meta_purge_and_warm_of_a_proxied_url(stack: Stack) -> None:
    target = fresh("lang=1&vary=Accept-Language&cc=" + quote("max-age=600"))
    get(stack, target, headers={"Accept-Language": "en"})
    get(stack, target, headers={"Accept-Language": "fr"})
    admin = f"{stack.web_url}/v1/proxy/api/url{target}"
    assert requests.get(admin, timeout=5).status_code == 401
    meta = requests.get(admin, headers=AUTH, timeout=5).json()
    assert meta["target"] == target
    kinds = sorted(k["kind"] for k in meta["keys"])
    assert kinds == ["primary", "variant", "variant"]
    assert {k["response"].get("status") for k in meta["keys"] if k["kind"] == "variant"} == {200}
    purged = requests.delete(admin, headers=AUTH, timeout=5).json()
    assert purged["purged"] == 3
    assert requests.get(admin, headers=AUTH, timeout=5).status_code == 404
    assert get(stack, target, headers={"Accept-Language": "en"}).headers["X-Cache"] == "MISS"
    assert calls(stack, target) == 3

    warm = [fresh("cc=" + quote("max-age=600")) for _ in range(3)]
    answer = requests.post(f"{stack.web_url}/v1/proxy/api/warm", json={"targets": warm}, headers=AUTH, timeout=5)
    assert answer.status_code == 202 and answer.json()["enqueued"] == 3
    wait_until(lambda: all(calls(stack, t) == 1 for t in warm), 10, "the warm-up's refreshes")
    for t in warm:
        wait_until(lambda t=t: get(stack, t).headers["X-Cache"] == "HIT", 5, "a warmed URL served from the cache")
        assert calls(stack, t) == 1
    bad = requests.post(f"{stack.web_url}/v1/proxy/api/warm", json={"targets": ["/../x"]}, headers=AUTH, timeout=5)
    assert bad.status_code == 400


def test_an_origin_error_serves_the_stale_response_its_stale_if_error_allows(stack: Stack) -> None:
    key, target = item(stack, "max-age=1, stale-if-error=60")
    first = get(stack, target)
    stack.origin_config(failure_rate=1.0)
    try:
        time.sleep(1.2)
        stale = get(stack, target)  # stale: waits for the refresh, which fails
        assert stale.status_code == 200 and stale.content == first.content
        assert stale.headers["X-Cache"] == "STALE"
        again = get(stack, target)  # cooling down: served stale at once
        assert again.status_code == 200 and again.content == first.content
    finally:
        stack.origin_config(failure_rate=0.0)
