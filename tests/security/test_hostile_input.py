"""Hostile keys and namespaces: never a 5xx, illegal ones stop before Redis and the origin, legal
ones reach an HTTP origin only percent-encoded inside the configured path."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from urllib.parse import quote, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared.origin import encode_key_for_path
from tests.faults.observe import assert_json_error, command_calls, raw_request
from tests.stack import RedisServer, Stack, stack_for, wait_until

NAMESPACES = """
[namespaces.demo]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 600
"""
CONFIGURED = {"demo"}
GUNICORN_MAX_REQUEST_LINE = 8190  # web/gunicorn.conf.py limit_request_line, above the proxy's own URI limit
# What an origin request path may look like: the configured /items/ and one percent-encoded segment.
ORIGIN_PATH = re.compile(r"/items/[A-Za-z0-9_.~%-]+")

NASTY_PIECES = [
    "..",
    ".",
    "/",
    "//",
    "%2f",
    "%2F",
    "%252f",
    "%00",
    "%",
    "%zz",
    "@evil.example",
    "@evil.example/",
    "?x=1",
    "#y",
    "\\",
    "~",
    " ",
    "\u202e",
    "\x00",
    "\n",
    "\r\n",
    "\t",
    "\x7f",
    "\x85",
    "}",
    "{",
    ":",
    "http://evil.example/",
    "ü",
    "🦀",
    "\ufeff",
    "missing-not",
    "\udcff",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("hostile")
    # The broker gets a Redis of its own: kombu runs EVALSHA there too, and this test counts
    # the cache's EVALSHAs to prove that illegal input never reached it.
    broker = RedisServer(tmp / "broker").start()
    env = {
        "CELERY_BROKER_URL": broker.url,
        "ORIGIN_LATENCY_MS": "0",
        "WEB_CONCURRENCY": "1",
        "COLD_WAIT_TIMEOUT_SECONDS": "5",
        # Every legal read must reach Redis here; the near-cache would answer repeats from memory.
        "NEAR_CACHE": "false",
    }
    try:
        with stack_for(tmp, NAMESPACES, env, worker_concurrency=2) as s:
            yield s
    finally:
        broker.stop()


def legal_key(raw: bytes) -> str | None:
    """The test's own statement of the key rules: UTF-8, 1-512 bytes, no control character."""
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not key or len(raw) > 512 or any(unicodedata.category(c) == "Cc" for c in key):
        return None
    return key


def encode(text: str, safe: str) -> str:
    # Lone surrogates cannot be UTF-8; send their bytes anyway (they must be refused, not crash).
    return quote(text.encode("utf-8", "surrogatepass"), safe=safe)


texts = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(NASTY_PIECES), min_size=1, max_size=8).map("".join),
    st.builds(lambda a, b: a + b, st.text(max_size=10), st.sampled_from(NASTY_PIECES)),
    # around the 512-byte limit, in ASCII and in two-byte UTF-8, and one far past any limit
    st.integers(min_value=505, max_value=520).map(lambda n: "k" * n),
    st.integers(min_value=62, max_value=66).map(lambda n: "ключ" * n),
    st.just("x" * 5000),
)
# Characters a client may leave unencoded; "?", "#", "%" and " " always get encoded
# (the first two would end the path; "%" is tried separately as double encoding).
hostile_namespaces = st.one_of(
    st.sampled_from(["DEMO", "demo ", "demo\n", "..", "demo%2f", "de/mo", "x" * 70, ""]),
    st.text(max_size=12),
)
# Mostly the configured namespace (so keys get exercised), sometimes a hostile one.
namespaces = st.integers(0, 9).flatmap(lambda i: st.just("demo") if i < 6 else hostile_namespaces)
safe_sets = st.sampled_from(["", "/", "/@:", "/.~@:+,;=!$&'()*"])


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(namespace=namespaces, key=texts, safe=safe_sets, double_encode=st.booleans())
def test_generated_keys_and_namespaces_never_5xx_and_illegal_ones_stop_before_redis(
    stack: Stack, namespace: str, key: str, safe: str, double_encode: bool, seen: dict[str, int]
) -> None:
    ns_part = encode(namespace, "")
    key_part = encode(key, safe)
    if double_encode:
        key_part = key_part.replace("%", "%25")
    path = f"/v1/cache/{ns_part}/{key_part}"
    redis = stack.redis.client()

    # What the server sees: the raw path. The namespace is its first segment as sent; the key must
    # be the one segment after it, percent-decoded once (a literal "/" in it is no route, except
    # <key>/meta, the admin's inspection route).
    ns_seen = ns_part
    segments = key_part.split("/")
    expected_key = legal_key(unquote_to_bytes(key_part)) if ns_seen in CONFIGURED and len(segments) == 1 else None
    if ns_seen not in CONFIGURED or len(segments) == 1:
        expected_refusal = (400, "invalid_key")
    elif len(segments) == 2 and segments[1] == "meta":
        # An admin route: the token is checked before the key (this stack sets no ADMIN_TOKEN).
        expected_refusal = (403, "admin_disabled")
    else:
        expected_refusal = (404, "not_found")

    # The previous example's refresh is acknowledged after its reader was answered, and its
    # acknowledgement clears the key's queued marker by script: let it land before counting.
    wait_until(lambda: not redis.keys("hl:*:q"), 10, "the previous refresh to be acknowledged", interval=0.01)
    evalsha_before = command_calls(redis, "evalsha") + command_calls(redis, "eval")
    calls_before = stack.origin_stats()["calls"]
    status, headers, body = raw_request(stack.web_port, "GET", path)
    evalsha_after = command_calls(redis, "evalsha") + command_calls(redis, "eval")
    origin = stack.origin_stats()

    assert status < 500, (path, status, body[:300])
    event(f"{status} " + ("legal" if expected_key is not None else "illegal") + f" ns={ns_seen in CONFIGURED}")
    if len(f"GET {path} HTTP/1.1") > GUNICORN_MAX_REQUEST_LINE:
        assert status == 414, (path[:100], status)
        assert evalsha_after == evalsha_before and origin["calls"] == calls_before
        return
    if expected_key is None:
        payload = assert_json_error(status, headers, body)
        assert status in (400, 403, 404), (path, status, payload)
        if ns_seen in CONFIGURED:
            assert (status, payload["error"]) == expected_refusal, (path, payload)
        # Other clients' scripts (a worker finishing the previous example's refresh) count in the
        # server-wide figure too: a path that reaches Redis reaches it on every try, so a try
        # that moved no script clears it.
        for _ in range(3):
            if evalsha_after == evalsha_before:
                break
            evalsha_before = command_calls(redis, "evalsha") + command_calls(redis, "eval")
            assert raw_request(stack.web_port, "GET", path)[0] == status
            evalsha_after = command_calls(redis, "evalsha") + command_calls(redis, "eval")
        assert evalsha_after == evalsha_before, f"{path} reached Redis"
        assert stack.origin_stats()["calls"] == calls_before, f"{path} reached the origin"
        return

    assert evalsha_after > evalsha_before
    if expected_key.startswith("missing-"):
        assert status == 404, (path, status, body[:200])
    else:
        assert status == 200, (path, status, body[:300])
        assert json.loads(body)["key"] == expected_key
    new_calls = origin["calls"] - calls_before
    if expected_key in seen:
        assert new_calls == 0, (path, "a cached key went back to the origin")
    else:
        assert new_calls == 1, (path, new_calls)
        sent = origin["paths"][-1]
        assert sent == "/items/" + encode_key_for_path(expected_key), (expected_key, sent)
        assert ORIGIN_PATH.fullmatch(sent), sent
        seen[expected_key] = 1


@pytest.fixture(scope="module")
def seen() -> dict[str, int]:
    """Legal keys already fetched once (a second read must be a cache hit)."""
    return {}


@pytest.mark.parametrize(
    ("raw_key", "server_key"),
    [
        ("%40evil.example%2F", "@evil.example/"),
        ("@evil.example%2F", "@evil.example/"),
        ("..%252f..%252fadmin", "..%2f..%2fadmin"),
        ("..%2f..%2fadmin", "../../admin"),
        ("%3Fx%3D1%23y", "?x=1#y"),
        ("http:%2F%2Fevil.example%2F", "http://evil.example/"),
        ("%2E%2E", ".."),
        ("a%2F..%2F..%2F..%2Fadmin", "a/../../../admin"),
    ],
)
def test_escape_attempts_reach_the_origin_as_one_encoded_segment(stack: Stack, raw_key: str, server_key: str) -> None:
    before = stack.origin_stats()
    status, _, body = raw_request(stack.web_port, "GET", "/v1/cache/demo/" + raw_key)
    assert status == 200, body[:300]
    assert json.loads(body)["key"] == server_key
    after = stack.origin_stats()
    new_paths = after["paths"][len(before["paths"]) :] if len(after["paths"]) < 100 else after["paths"][-1:]
    expected = "/items/" + encode_key_for_path(server_key)
    assert after["calls"] - before["calls"] <= 1
    if after["calls"] > before["calls"]:
        assert new_paths == [expected], new_paths
    assert all(ORIGIN_PATH.fullmatch(p) for p in after["paths"]), after["paths"]
    assert after["per_key"].get(server_key) == 1


@pytest.mark.parametrize("raw_key", ["@evil.example/", "a/../../admin", "../../admin", "a/b", "a//b", "a/"])
def test_a_literal_slash_in_a_key_is_no_route_and_reaches_nothing(stack: Stack, raw_key: str) -> None:
    redis = stack.redis.client()
    evalsha_before = command_calls(redis, "evalsha") + command_calls(redis, "eval")
    calls_before = stack.origin_stats()["calls"]
    status, headers, body = raw_request(stack.web_port, "GET", "/v1/cache/demo/" + raw_key)
    payload = assert_json_error(status, headers, body)
    assert (status, payload["error"]) == (404, "not_found"), payload
    assert "%2F" in payload["detail"]
    assert command_calls(redis, "evalsha") + command_calls(redis, "eval") == evalsha_before
    assert stack.origin_stats()["calls"] == calls_before
