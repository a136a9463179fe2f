"""Origin-driven freshness: Cache-Control parsing, clamping and fallbacks (pure, no I/O)."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import pytest

from shared.freshness import CacheHeaders, Lifetimes, MalformedCacheControl, cache_policy, parse_cache_control
from shared.namespaces import Namespace, NamespaceConfigError, build_namespace
from shared.settings import Settings

NOW = 1_800_000_000.0


def namespace(**options: Any) -> Namespace:
    settings = Settings(cache_ttl_seconds=30, stale_ttl_seconds=300, stale_if_error_seconds=3600)
    raw = {"origin": "http://origin.test/items/{key}", "freshness": "origin", **options}
    return build_namespace("n", raw, settings)


def policy(cache_control: str | None, ns: Namespace | None = None, **headers: str) -> Any:
    return cache_policy(ns or namespace(), CacheHeaders(cache_control=cache_control, **headers), NOW)


def test_max_age_sets_the_fresh_life_whatever_the_namespace_ttl() -> None:
    assert policy("max-age=2").lifetimes == Lifetimes(2000, 300_000, 3_600_000)


def test_s_maxage_wins_over_max_age_in_either_order() -> None:
    assert policy("max-age=60, s-maxage=5").lifetimes.soft_ttl_ms == 5000
    assert policy("s-maxage=5, max-age=60").lifetimes.soft_ttl_ms == 5000


def test_expires_minus_date_when_no_max_age() -> None:
    headers = {"expires": formatdate(NOW + 90, usegmt=True), "date": formatdate(NOW - 10, usegmt=True)}
    assert policy(None, **headers).lifetimes.soft_ttl_ms == 100_000
    assert policy("max-age=7", **headers).lifetimes.soft_ttl_ms == 7000
    # No Date: Expires is measured from now. An invalid Expires means already expired (clamped).
    assert policy(None, expires=formatdate(NOW + 20, usegmt=True)).lifetimes.soft_ttl_ms == 20_000
    assert policy(None, expires="0").lifetimes.soft_ttl_ms == 1000


def test_stale_while_revalidate_and_stale_if_error_set_the_other_two_lifetimes() -> None:
    assert policy("max-age=10, stale-while-revalidate=20, stale-if-error=40").lifetimes == Lifetimes(
        10_000, 20_000, 40_000
    )


def test_every_lifetime_is_clamped_to_the_namespace_bounds() -> None:
    ns = namespace(
        min_ttl_seconds=5,
        max_ttl_seconds=60,
        min_stale_seconds=2,
        max_stale_seconds=30,
        min_stale_if_error_seconds=10,
        max_stale_if_error_seconds=100,
    )
    assert policy("max-age=1, stale-while-revalidate=0, stale-if-error=1", ns).lifetimes == Lifetimes(
        5000, 2000, 10_000
    )
    assert policy("max-age=9999999999999, stale-while-revalidate=999, stale-if-error=999", ns).lifetimes == Lifetimes(
        60_000, 30_000, 100_000
    )


def test_what_the_origin_leaves_out_falls_back_to_the_namespace() -> None:
    assert policy(None).lifetimes == Lifetimes(30_000, 300_000, 3_600_000)
    assert policy("public").lifetimes == Lifetimes(30_000, 300_000, 3_600_000)


def test_no_cache_means_refresh_at_the_next_read_bounded_by_the_minimum() -> None:
    assert policy("no-cache, max-age=60").lifetimes.soft_ttl_ms == 1000


@pytest.mark.parametrize("header", ["no-store", "private", "max-age=60, no-store", 'private="set-cookie", max-age=9'])
def test_no_store_and_private_answers_are_not_storable(header: str) -> None:
    assert not policy(header).storable


@pytest.mark.parametrize(
    "header",
    [
        "max-age=abc",
        "max-age=-1",
        "max-age=",
        "max-age=1.5",
        "max-age 60",
        "=60",
        'max-age="60',
        "max-age=1, max-age=2",
    ],
)
def test_malformed_cache_control_falls_back_to_the_namespace_ttl(header: str) -> None:
    result = policy(header)
    assert result.storable and result.malformed
    assert result.lifetimes == Lifetimes(30_000, 300_000, 3_600_000)


def test_the_parser_takes_quoted_arguments_empty_elements_and_any_case() -> None:
    assert parse_cache_control(' Max-Age="30" ,, public, ext="a \\" b" ') == {
        "max-age": "30",
        "public": None,
        "ext": 'a " b',
    }
    with pytest.raises(MalformedCacheControl):
        parse_cache_control("max-age=30 junk")


def test_fixed_freshness_ignores_cache_control() -> None:
    ns = build_namespace("f", {"origin": "http://origin.test/items/{key}"}, Settings(cache_ttl_seconds=30))
    result = cache_policy(ns, CacheHeaders(cache_control="no-store, max-age=2"), NOW)
    assert result.storable and result.lifetimes.soft_ttl_ms == 30_000 and not result.malformed


def test_a_strategy_that_never_serves_stale_gets_no_stale_window() -> None:
    ns = namespace(strategy="lock")
    assert policy("max-age=5, stale-while-revalidate=60", ns).lifetimes.stale_ms == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"freshness": "guess"}, "freshness"),
        ({"freshness": "fixed", "min_ttl_seconds": 1}, 'need freshness = "origin"'),
        ({"min_ttl_seconds": 10, "max_ttl_seconds": 5}, "exceeds"),
        ({"max_stale_seconds": -1}, "max_stale_seconds"),
        ({"min_stale_if_error_seconds": "1"}, "min_stale_if_error_seconds"),
    ],
)
def test_bad_freshness_options_stop_start_up_naming_them(options: dict[str, Any], message: str) -> None:
    with pytest.raises(NamespaceConfigError, match=message):
        namespace(**options)
