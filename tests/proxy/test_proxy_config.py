"""A proxy namespace's options are validated at start: one line naming the table and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.namespaces import NamespaceConfigError, build_namespace, load_namespaces
from shared.settings import Settings
from tests.test_start_up_validation import ENTRY_POINTS, only_line, start


def test_a_proxy_namespace_defaults_to_rfc_9111_behaviour() -> None:
    ns = build_namespace("cat", {"proxy": "http://origin.internal:8080/api/", "mount": "/catalog"}, Settings())
    assert ns.proxy is not None
    assert (ns.proxy.scheme, ns.proxy.netloc, ns.proxy.base_path, ns.proxy.mount) == (
        "http",
        "origin.internal:8080",
        "/api",
        "/catalog",
    )
    assert ns.proxy.default_ttl_seconds == 0 and ns.stale_ttl_seconds == 0 and ns.stale_if_error_seconds == 0
    assert ns.origin_name == "origin.internal:8080"
    assert ns.proxy.forward_headers == frozenset()


@pytest.mark.parametrize(
    "mount", ["/v1", "/v1/proxy", "/metrics", "/healthz", "/readyz", "/status.json", "/openapi.json", "/"]
)
def test_a_mount_that_shadows_a_herdless_route_is_refused_naming_it(mount: str) -> None:
    with pytest.raises(NamespaceConfigError) as refused:
        build_namespace("cat", {"proxy": "http://o:1", "mount": mount}, Settings())
    message = str(refused.value)
    assert "[namespaces.cat] mount" in message and "shadows herdless's own route" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"proxy": "ftp://o/x", "mount": "/c"}, "proxy"),
        ({"proxy": "http://user:pw@o/x", "mount": "/c"}, "proxy"),
        ({"proxy": "http://o/x?y=1", "mount": "/c"}, "proxy"),
        ({"proxy": "http://o", "mount": "c"}, "mount"),
        ({"proxy": "http://o", "mount": "/c/../d"}, "mount"),
        ({"proxy": "http://o", "mount": "/c", "default_ttl_seconds": -1}, "default_ttl_seconds"),
        ({"proxy": "http://o", "mount": "/c", "forward_headers": "Authorization"}, "forward_headers"),
        ({"proxy": "http://o", "mount": "/c", "origin": "http://o/{key}"}, "origin"),
        ({"proxy": "http://o", "mount": "/c", "strategy": "naive"}, "strategy"),
    ],
)
def test_a_bad_proxy_option_is_named(raw: dict[str, object], field: str) -> None:
    with pytest.raises(NamespaceConfigError) as refused:
        build_namespace("cat", raw, Settings())
    assert f"[namespaces.cat] {field}" in str(refused.value)


def test_two_mounts_that_overlap_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "namespaces.toml"
    path.write_text(
        '[namespaces.a]\nproxy = "http://o"\nmount = "/x"\n[namespaces.b]\nproxy = "http://o"\nmount = "/x/y"\n'
    )
    with pytest.raises(NamespaceConfigError, match=r"\[namespaces.b\] mount: overlaps"):
        load_namespaces(Settings(), path)


@pytest.mark.parametrize("entry_point", ["web", "run.sh check"])
def test_a_shadowing_mount_stops_start_up_with_one_line(tmp_path: Path, entry_point: str) -> None:
    path = tmp_path / "namespaces.toml"
    path.write_text('[namespaces.cat]\nproxy = "http://127.0.0.1:9"\nmount = "/metrics"\n')
    line = only_line(start(ENTRY_POINTS[entry_point], path))
    assert "[namespaces.cat] mount" in line and "/metrics" in line


def test_an_invalidated_location_is_the_same_origin_whatever_its_spelling_of_host_and_port() -> None:
    ns = build_namespace("cat", {"proxy": "http://origin.internal/api", "mount": "/catalog"}, Settings())
    assert ns.proxy is not None
    same = ns.proxy.same_origin_target
    assert same("http://origin.internal/api/x?q=1") == "/x?q=1"
    assert same("http://ORIGIN.internal:80/api/x") == "/x"  # the default port, spelt out
    assert same("HTTP://origin.internal/api/x#frag") == "/x"
    assert same("/api/y") == "/y"
    for other in (
        "http://origin.internal:81/api/x",
        "https://origin.internal/api/x",
        "http://evil.example/api/x",
        "http://user@origin.internal/api/x",
        "http://origin.internal:bad/api/x",
        "/apix",
        "//evil.example/api/x",
    ):
        assert same(other) is None, other
