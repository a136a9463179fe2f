"""A proxy namespace past its limits answers a JSON refusal, never a 500. Real processes."""

from __future__ import annotations

import socket
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
# second request arrives while the first waits; bodies of 1000 bytes at most.
STACK_ENV = {"ORIGIN_LATENCY_MS": "600", "WEB_CONCURRENCY": "1", "MAX_COLD_WAITERS": "1", "ORIGIN_MAX_BYTES": "1000"}


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


def _chunked_post(stack: Stack, path: str, body: bytes) -> tuple[int, bytes]:
    """POST `body` with Transfer-Encoding: chunked (no Content-Length): (status, answer body)."""
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 300]), body[i : i + 300]) for i in range(0, len(body), 300))
    request = b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % path.encode()
    with socket.create_connection(("127.0.0.1", stack.web_port), timeout=15) as sock:
        sock.sendall(request + chunks + b"0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), content


def test_a_chunked_body_over_origin_max_bytes_is_refused_413_not_forwarded_cut_short(stack: Stack) -> None:
    target = f"/api/upload-{uuid.uuid4().hex[:10]}"
    status, content = _chunked_post(stack, f"/api-proxy{target}", b"x" * 2000)
    assert status == 413 and b'"error"' in content, content[:200]
    assert stack.origin_stats()["per_key"].get("api:" + target, 0) == 0
    status, _ = _chunked_post(stack, f"/api-proxy{target}", b"y" * 1000)
    assert status == 201
