"""The cache routes' paths are parsed from the raw request URI: one documented key form (`/` sent
as %2F), no literal `/` in a key, and no query string silently dropped."""

from __future__ import annotations

import pytest

from web.cache_path import CachePath, PathError, parse_cache_path, raw_request_uri

NAMESPACES = {"demo"}


def parse(method: str, raw_uri: str) -> CachePath:
    path, query = raw_request_uri({"RAW_URI": raw_uri, "PATH_INFO": "ignored"})
    return parse_cache_path(method, path, query, NAMESPACES)


def refused(method: str, raw_uri: str) -> tuple[int, str]:
    with pytest.raises(PathError) as caught:
        parse(method, raw_uri)
    return caught.value.status, caught.value.error


@pytest.mark.parametrize(
    ("method", "uri", "action", "key"),
    [
        ("GET", "/v1/cache/demo/a%2Fb", "read", "a/b"),
        ("HEAD", "/v1/cache/demo/a%2fb", "read", "a/b"),
        ("GET", "/v1/cache/demo/a%2Fmeta", "read", "a/meta"),
        ("GET", "/v1/cache/demo/a/meta", "meta", "a"),
        ("GET", "/v1/cache/demo/meta", "read", "meta"),
        ("POST", "/v1/cache/demo/x/refresh", "refresh", "x"),
        ("POST", "/v1/cache/demo/warm", "warm", None),
        ("POST", "/v1/cache/demo/warm/refresh", "refresh", "warm"),
        ("DELETE", "/v1/cache/demo/a%2Fb", "purge", "a/b"),
        ("GET", "/v1/cache/demo/%C3%BC%3Fx%3D1%23y", "read", "ü?x=1#y"),
        ("GET", "/v1/cache/demo/%2E%2E", "read", ".."),
        ("GET", "/v1/cache/demo/a+b", "read", "a+b"),
        ("GET", "http://example.test/v1/cache/demo/a%2Fb", "read", "a/b"),
    ],
)
def test_a_key_is_one_raw_segment_decoded_once(method: str, uri: str, action: str, key: str | None) -> None:
    parsed = parse(method, uri)
    assert (parsed.action, parsed.key) == (action, key)


def test_an_encoded_slash_before_refresh_is_part_of_the_key_not_the_refresh_route() -> None:
    # POST without the /refresh suffix is no route at all; the key "x/refresh" is never refreshed
    # under the name "x".
    assert refused("POST", "/v1/cache/demo/x%2Frefresh") == (404, "not_found")
    assert parse("POST", "/v1/cache/demo/x%2Frefresh/refresh").key == "x/refresh"


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        ("GET", "/v1/cache/demo/a/b"),
        ("GET", "/v1/cache/demo/a/"),
        ("GET", "/v1/cache/demo/a//b"),
        ("DELETE", "/v1/cache/demo/a/b"),
        ("POST", "/v1/cache/demo/a/b/refresh"),
        ("POST", "/v1/cache/demo/a"),
        ("GET", "/v1/cache/demo/warm/refresh"),
    ],
)
def test_a_literal_slash_in_the_key_part_is_no_route(method: str, uri: str) -> None:
    assert refused(method, uri) == (404, "not_found")


@pytest.mark.parametrize(
    "uri",
    [
        "/v1/cache/demo/q1?x=2",
        "/v1/cache/demo/q1?",
        "/v1/cache/demo/q1?soft=1",
        "/v1/cache/demo/q1/meta?x=1",
    ],
)
def test_a_query_string_on_a_read_is_refused_not_dropped(uri: str) -> None:
    assert refused("GET", uri) == (400, "query_not_allowed")


def test_a_query_string_on_refresh_or_warm_is_refused() -> None:
    assert refused("POST", "/v1/cache/demo/q1/refresh?force=1") == (400, "query_not_allowed")
    assert refused("POST", "/v1/cache/demo/warm?x=1") == (400, "query_not_allowed")


@pytest.mark.parametrize(
    ("query", "soft"), [("", False), ("?soft=1", True), ("?soft=true", True), ("?soft=yes", True), ("?soft=0", False)]
)
def test_purge_takes_only_soft(query: str, soft: bool) -> None:
    assert parse("DELETE", "/v1/cache/demo/k" + query).soft is soft


@pytest.mark.parametrize("query", ["?soft=maybe", "?soft", "?soft=1&x=2", "?hard=1", "?soft=1&soft=0"])
def test_purge_refuses_any_other_query(query: str) -> None:
    # A typo must not turn a soft purge into a hard one.
    assert refused("DELETE", "/v1/cache/demo/k" + query) == (400, "query_not_allowed")


@pytest.mark.parametrize(
    "uri", ["/v1/cache/demo/a%zz", "/v1/cache/demo/a%2", "/v1/cache/demo/%FF%FE", "/v1/cache/demo/a%00b"]
)
def test_bad_escapes_and_illegal_keys_are_400(uri: str) -> None:
    assert refused("GET", uri) == (400, "invalid_key")


def test_unknown_namespaces_are_404_before_the_key_is_looked_at() -> None:
    assert refused("GET", "/v1/cache/nope/%FF") == (404, "unknown_namespace")
    assert refused("GET", "/v1/cache/de%6Do/k") == (404, "unknown_namespace")


def test_without_a_raw_uri_the_decoded_path_is_re_encoded_per_segment() -> None:
    # A server that passes only PATH_INFO: "/" can only mean a separator there. (A WSGI string
    # holds the path's bytes as latin-1.)
    wsgi_path = "/v1/cache/demo/ü b".encode().decode("latin-1")
    path, query = raw_request_uri({"PATH_INFO": wsgi_path, "QUERY_STRING": ""})
    assert path == "/v1/cache/demo/%C3%BC%20b" and query is None
    assert parse_cache_path("GET", path, query, NAMESPACES).key == "ü b"
    path, query = raw_request_uri({"PATH_INFO": "/v1/cache/demo/k", "QUERY_STRING": "x=1"})
    assert query == "x=1"


def test_request_uri_is_used_when_raw_uri_is_missing() -> None:
    path, query = raw_request_uri({"REQUEST_URI": "/v1/cache/demo/a%2Fb?x", "PATH_INFO": "/v1/cache/demo/a/b"})
    assert (path, query) == ("/v1/cache/demo/a%2Fb", "x")
