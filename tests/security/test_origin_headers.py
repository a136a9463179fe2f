"""A namespace's origin headers reach the origin on every refresh, and their values show nowhere
else: not in any process log of the stack, not in any answer of herdless."""

from __future__ import annotations

import requests

from tests.faults.observe import read_logs
from tests.stack import Stack, wait_until

ADMIN = "hdr-admin-token-81d3cc0887f26cf832235a65"
ORIGIN_TOKEN = "0rigin-T0ken-4c1e9a"
ORIGIN_KEY = "0rigin-Key-7b3d52"
SECRETS = (ORIGIN_TOKEN, ORIGIN_KEY)
NAMESPACES = """
[namespaces.api]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 1
xfetch_beta = 1
stale_if_error_seconds = 60
headers = { Authorization = "Bearer ${HL_ORIGIN_TOKEN}", X-Api-Key = "${HL_ORIGIN_KEY}" }

[namespaces.plain]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""


STACK_NAMESPACES = NAMESPACES
STACK_ENV = {
    "ORIGIN_LATENCY_MS": "20",
    "ADMIN_TOKEN": ADMIN,
    "LOG_LEVEL": "debug",
    "HL_ORIGIN_TOKEN": ORIGIN_TOKEN,
    "HL_ORIGIN_KEY": ORIGIN_KEY,
}


def _received(stack: Stack) -> dict[str, dict[str, int]]:
    return stack.origin_stats()["headers"]


def test_every_refresh_of_the_namespace_sends_its_headers_and_no_other_namespace_does(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    requests.post(stack.origin_url + "/stats/reset", timeout=5).raise_for_status()
    # Cold misses, a stale refresh, a manual refresh and a warm-up: every way a refresh starts.
    for key in ("a", "b", "c"):
        assert stack.get("api", key).status_code == 200
    wait_until(lambda: stack.get("api", "a").headers["X-Cache"] == "STALE", 10, "key a to go stale")
    assert requests.post(stack.url("api", "b") + "/refresh", headers=admin, timeout=5).status_code == 202
    warm = requests.post(f"{stack.web_url}/v1/cache/api/warm", json={"keys": ["d", "e"]}, headers=admin, timeout=10)
    assert warm.status_code == 202 and warm.json()["enqueued"] == 2
    assert stack.get("plain", "p").status_code == 200
    per_key = lambda: stack.origin_stats()["per_key"]  # noqa: E731
    wait_until(lambda: all(per_key().get(k, 0) >= 2 for k in ("a", "b")) and "e" in per_key(), 10, "the refreshes")

    stats = stack.origin_stats()
    api_calls = sum(n for k, n in stats["per_key"].items() if k != "p")
    assert api_calls >= 7
    # Every call of the api namespace carried both headers with their values; the plain one none.
    assert stats["headers"] == {
        "authorization": {f"Bearer {ORIGIN_TOKEN}": api_calls},
        "x-api-key": {ORIGIN_KEY: api_calls},
    }, stats["headers"]


def test_the_header_values_show_in_no_log_line_and_no_answer_of_herdless(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    bodies: list[str] = []

    def keep(r: requests.Response) -> requests.Response:
        bodies.append(r.text + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items()))
        return r

    keep(stack.get("api", "scan"))
    # Origin failures: a cold key gets 502, and the worker logs each origin error.
    stack.origin_config(failure_rate=1.0)
    try:
        failed = keep(stack.get("api", "cold-while-failing"))
        assert failed.status_code == 502 and failed.json()["error"] == "origin_error", failed.text
        keep(requests.post(stack.url("api", "scan") + "/refresh", headers=admin, timeout=5))
        wait_until(lambda: "refresh of api/'scan' failed" in read_logs(stack), 10, "the logged origin error")
    finally:
        stack.origin_config(failure_rate=0.0)

    assert keep(requests.get(stack.web_url + "/v1/namespaces", timeout=5)).status_code == 401  # admin only
    listed = keep(requests.get(stack.web_url + "/v1/namespaces", headers=admin, timeout=5))
    api = next(ns for ns in listed.json()["namespaces"] if ns["name"] == "api")
    assert api["origin_headers"] == ["Authorization", "X-Api-Key"]
    for path in ("/status.json", "/metrics", "/openapi.json", "/", "/readyz", "/v1/cache/nope/k", "/v1/cache/api/"):
        keep(requests.get(stack.web_url + path, timeout=5))
    keep(requests.get(stack.worker_metrics_url, timeout=5))
    keep(requests.get(stack.url("api", "bad\x01key"), timeout=5))
    keep(requests.post(f"{stack.web_url}/v1/cache/api/warm", data=b"{", headers=admin, timeout=5))
    keep(requests.post(f"{stack.web_url}/v1/cache/api/warm", json={"keys": ["x"]}, timeout=5))
    keep(requests.delete(stack.url("api", "scan"), headers={"Authorization": "Bearer nope"}, timeout=5))
    assert any("origin_error" in b for b in bodies) and any("herdless_origin_calls_total" in b for b in bodies)

    for body in bodies:
        for secret in SECRETS:
            assert secret not in body, f"an origin header value leaked into an answer: {body[:300]}"
    logs = read_logs(stack)
    assert "DEBUG" in logs and "refresh of api/'scan' failed" in logs  # the logs are real and verbose
    for secret in SECRETS:
        assert secret not in logs, "an origin header value leaked into a process log"
