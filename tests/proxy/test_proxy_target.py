"""Request-target safety: what a proxy namespace forwards, byte for byte, and what it refuses."""

from __future__ import annotations

import pytest

from shared.namespaces import Namespace, build_namespace
from shared.settings import Settings
from web.proxy_target import MAX_TARGET_BYTES, TargetError, check_header_sizes, mount_of, parse_target


@pytest.fixture
def ns() -> Namespace:
    return build_namespace("cat", {"proxy": "http://origin.internal:8080/api", "mount": "/catalog"}, Settings())


@pytest.mark.parametrize(
    ("raw", "target", "upstream"),
    [
        ("/catalog", "", "http://origin.internal:8080/api"),
        ("/catalog/", "/", "http://origin.internal:8080/api/"),
        ("/catalog/v2/prices/sku-1?currency=EUR&channel=web", "/v2/prices/sku-1?currency=EUR&channel=web", None),
        ("/catalog/a%20b/%2fx?q=%e2%82%ac&x", "/a%20b/%2fx?q=%e2%82%ac&x", None),  # never re-encoded
        ("/catalog/search?q=a+b&page=2&", "/search?q=a+b&page=2&", None),
        ("/catalog/x?", "/x?", None),  # an empty query is kept as sent
        ("/catalog?a=1", "?a=1", "http://origin.internal:8080/api?a=1"),
        ("/catalog/users/1/orders?sort=-date", "/users/1/orders?sort=-date", None),
        ("/catalog/x?next=//evil.com/a@b", "/x?next=//evil.com/a@b", None),  # the query is data
        ("/catalog/file.tar.gz", "/file.tar.gz", None),
        ("/catalog/...", "/...", None),  # three dots are a name, not a dot segment
    ],
)
def test_a_target_is_forwarded_byte_for_byte_under_the_base_path(
    ns: Namespace, raw: str, target: str, upstream: str | None
) -> None:
    parsed = parse_target(raw, ns)
    assert parsed.target == target
    assert parsed.upstream_url == (upstream or "http://origin.internal:8080/api" + target)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("http://evil.com/catalog/x", 400),  # absolute-form
        ("*", 400),
        ("/catalog//evil.com/x", 400),
        ("/catalog/../admin", 400),
        ("/catalog/x/..", 400),
        ("/catalog/./x", 400),
        ("/catalog/%2e%2e/%2e%2e/etc/passwd", 400),
        ("/catalog/%2E%2e/x", 400),
        ("/catalog/.%2e/x", 400),
        ("/catalog/x/..%2fadmin", 400),  # decodes to a dot segment
        ("/catalog/%252e%252e/x", 400),  # double-encoded
        ("/catalog/x\\..\\y", 400),
        ("/catalog/..;/admin", 400),  # a path parameter: Tomcat and Spring resolve "..;" as ".."
        ("/catalog/x/..;jsessionid=1/y", 400),
        ("/catalog/.;x/y", 400),
        ("/catalog/%2e%2e;/admin", 400),
        ("/catalog/..%3b/admin", 400),
        ("/catalog/x%5c..%5cy", 400),
        ("/catalog/x%5Cy", 400),
        ("/catalog/@evil.com/x", 400),
        ("/catalog/x@evil.com", 400),
        ("/catalog/x%0d%0aHost:%20evil", 400),
        ("/catalog/x?a=%0d%0aSet-Cookie:x", 400),
        ("/catalog/x%00", 400),
        ("/catalog/x y", 400),
        ("/catalog/x\r\nHost: evil", 400),
        ("/catalog/x#frag", 400),
        ("/catalog/caf\u00e9", 400),
        ("/catalog/x%zz", 400),
        ("/catalog/x%2", 400),
        ("/catalog/" + "a" * MAX_TARGET_BYTES, 414),
    ],
)
def test_a_hostile_target_is_refused_with_a_4xx(ns: Namespace, raw: str, status: int) -> None:
    with pytest.raises(TargetError) as refused:
        parse_target(raw, ns)
    assert refused.value.status == status
    assert 400 <= refused.value.status < 500


def test_a_mount_matches_whole_segments_only(ns: Namespace) -> None:
    mounts = [("/catalog", ns)]
    assert mount_of("/catalog", mounts) is ns
    assert mount_of("/catalog/x?y", mounts) is ns
    assert mount_of("/catalog?y", mounts) is ns
    assert mount_of("/catalogue/x", mounts) is None
    assert mount_of("/catalog@evil.com/x", mounts) is None
    assert mount_of("/v1/cache/demo/k", mounts) is None


def test_no_target_can_change_the_scheme_host_or_port(ns: Namespace) -> None:
    for raw in ("/catalog:9999/x", "/catalog/:9999", "/catalog/x?@evil.com:1/", "/catalog/%40evil.com/"):
        try:
            parsed = parse_target(raw, ns)
        except TargetError:
            continue
        assert parsed.upstream_url.startswith("http://origin.internal:8080/api/") or parsed.upstream_url.startswith(
            "http://origin.internal:8080/api?"
        ), raw


def test_over_long_headers_are_refused_with_431() -> None:
    check_header_sizes([("Accept", "x" * 100)] * 10)
    with pytest.raises(TargetError) as one:
        check_header_sizes([("X-Big", "x" * 9000)])
    assert one.value.status == 431
    with pytest.raises(TargetError) as total:
        check_header_sizes([(f"X-{i}", "x" * 8000) for i in range(5)])
    assert total.value.status == 431
