"""A proxy namespace past its limits answers a JSON refusal, never a 500. Real processes."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.stack import Stack, wait_until

STACK_NAMESPACES = """
[namespaces.api]
proxy = "${ORIGIN_BASE_URL}"
mount = "/api-proxy"
"""
# One web process that lets one request wait on a refresh at a time; a slow origin, so that the
# second request arrives while the first waits.
STACK_ENV = {"ORIGIN_LATENCY_MS": "600", "WEB_CONCURRENCY": "1", "MAX_COLD_WAITERS": "1"}


def test_a_revalidation_past_the_waiter_limit_is_refused_503_json(stack: Stack) -> None:
    key = f"k-{uuid.uuid4().hex[:10]}"
    stack.origin_config(keys={key: {"value": {"v": key}, "cache_control": "no-cache"}})
    url = f"{stack.web_url}/api-proxy/items/{key}"
    assert requests.get(url, timeout=15).status_code == 200  # stored; every reuse revalidates

    def one(_: int) -> requests.Response:
        return requests.get(url, timeout=15)

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(one, 0)
        wait_until(lambda: stack.origin_stats()["in_flight"] == 1, 5, "the first revalidation at the origin")
        second = pool.submit(one, 1).result()
        assert first.result().status_code == 200
    assert second.status_code == 503, second.text
    assert second.json()["error"] == "too_many_waiters" and second.headers["Retry-After"]
