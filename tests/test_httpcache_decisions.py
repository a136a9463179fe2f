"""Storage, freshness, reuse, Vary, conditionals, invalidation and Cache-Status (pure, no I/O)."""

from __future__ import annotations

from email.utils import formatdate

from hypothesis import given
from hypothesis import strategies as st

from shared.httpcache.conditional import (
    client_not_modified,
    is_not_modified_for,
    merge_not_modified,
    not_modified,
    revalidation_headers,
)
from shared.httpcache.fields import Headers
from shared.httpcache.invalidation import invalidation_targets
from shared.httpcache.lifetime import Policy, StoredResponse, freshness_lifetime, initial_age
from shared.httpcache.reuse import Forward, Reuse, decide, may_serve_on_error
from shared.httpcache.status import cache_status, with_cache_fields
from shared.httpcache.storage import NotStored, storable, stored_headers
from shared.httpcache.vary import variant_key, vary_fields

NOW = 1_800_000_000.0
POLICY = Policy()


def date(offset: float) -> str:
    return formatdate(NOW + offset, usegmt=True)


def stored(headers: Headers, status: int = 200, at: float = NOW, selecting: Headers = ()) -> StoredResponse:
    return StoredResponse(status, headers, at, at, selecting_headers=selecting)


def reuse(headers: Headers, request: Headers = (), later: float = 0.0, policy: Policy = POLICY) -> Reuse:
    return decide("GET", request, stored(headers), NOW + later, policy).action


def test_statuses_methods_and_directives_that_prevent_storage() -> None:
    fresh = (("Cache-Control", "max-age=60"),)
    assert storable("GET", (), 200, fresh).storable
    assert storable("POST", (), 200, fresh).reason is NotStored.METHOD
    assert storable("GET", (), 206, fresh).reason is NotStored.STATUS
    assert storable("GET", (), 200, (("Cache-Control", "no-store"),)).reason is NotStored.NO_STORE
    assert storable("GET", (("Cache-Control", "no-store"),), 200, fresh).reason is NotStored.NO_STORE
    assert storable("GET", (), 200, (("Cache-Control", "private, max-age=60"),)).reason is NotStored.PRIVATE
    assert storable("GET", (), 599, (("Cache-Control", "max-age=60, must-understand"),)).reason is NotStored.STATUS
    assert storable("GET", (), 200, (("Cache-Control", "max-age=60"), ("Vary", "Foo, *"))).reason is NotStored.VARY_STAR


def test_heuristically_cacheable_statuses_store_without_freshness_others_do_not() -> None:
    lm = (("Last-Modified", date(-86400)), ("Date", date(0)))
    for status in (200, 203, 204, 404, 405, 410, 414, 501):
        assert storable("GET", (), status, lm).storable, status
    for status in (201, 202, 403, 502, 503, 504, 599):
        assert storable("GET", (), status, lm).reason is NotStored.NOT_CACHEABLE, status
    assert storable("GET", (), 599, (*lm, ("Cache-Control", "public"))).storable


def test_a_response_setting_a_cookie_is_stored_only_with_explicit_freshness() -> None:
    # Heuristic freshness (or the namespace's default_ttl_seconds) would hand one client's
    # session cookie to every other: only an origin that says how long to keep it shares it.
    cookie = (("Set-Cookie", "session=alice"), ("Last-Modified", date(-86400)), ("Date", date(0)))
    assert storable("GET", (), 200, cookie).reason is NotStored.SET_COOKIE
    assert storable("GET", (), 200, (("Set-Cookie", "session=alice"),)).reason is NotStored.SET_COOKIE
    for explicit in (("Cache-Control", "max-age=60"), ("Cache-Control", "public"), ("Expires", date(60))):
        assert storable("GET", (), 200, (*cookie, explicit)).storable, explicit


def test_authorization_requests_store_only_what_the_response_allows() -> None:
    auth = (("Authorization", "Bearer x"),)
    assert storable("GET", auth, 200, (("Expires", date(3600)),)).reason is NotStored.AUTHORIZATION
    for cc in ("max-age=60, public", "s-maxage=60", "max-age=60, must-revalidate"):
        assert storable("GET", auth, 200, (("Cache-Control", cc),)).storable, cc


def test_stored_headers_drop_hop_by_hop_and_private_fields() -> None:
    headers = (("Connection", "a"), ("a", "1"), ("Cache-Control", 'private="set-cookie"'), ("Set-Cookie", "x"))
    assert stored_headers(headers) == (("Cache-Control", 'private="set-cookie"'),)


def test_freshness_order_s_maxage_max_age_expires_heuristic_default() -> None:
    assert freshness_lifetime(200, (("Cache-Control", "max-age=60, s-maxage=5"),), POLICY) == 5
    assert freshness_lifetime(200, (("Cache-Control", "max-age=60"), ("Expires", date(10))), POLICY) == 60
    assert freshness_lifetime(200, (("Expires", date(90)), ("Date", date(-10))), POLICY) == 100
    assert freshness_lifetime(200, (("Expires", "0"), ("Date", date(0))), POLICY) == 0
    heuristic = (("Last-Modified", date(-1000)), ("Date", date(0)))
    assert freshness_lifetime(200, heuristic, POLICY) == 100
    assert freshness_lifetime(201, heuristic, POLICY) == 0
    assert freshness_lifetime(200, (), Policy(default_ttl=30)) == 30
    assert freshness_lifetime(200, (("Cache-Control", "max-age=0"),), Policy(default_ttl=30)) == 0


def test_age_from_the_origin_counts_against_freshness() -> None:
    assert reuse((("Cache-Control", "max-age=3600"), ("Age", "7200"), ("Date", date(0)))) is Reuse.FETCH
    assert reuse((("Cache-Control", "max-age=3600"), ("Age", "1800"))) is Reuse.FRESH
    assert reuse((("Expires", date(10)), ("Date", date(-10)), ("Age", "25"))) is Reuse.FETCH


def test_a_date_within_the_requests_own_second_ages_the_response_by_its_round_trip_only() -> None:
    # Sent at .9, answered 0.1 s later, Date truncated to the second: the response is 0.1 s
    # old, not 1.0 s. A Date from before the request's second (an upstream cache's copy) counts.
    sent = 1_800_000_000.9
    made = (("Cache-Control", "max-age=5"), ("Date", formatdate(1_800_000_000, usegmt=True)))
    assert abs(initial_age(made, sent, sent + 0.1) - 0.1) < 1e-6
    older = (("Cache-Control", "max-age=5"), ("Date", formatdate(1_800_000_000 - 3, usegmt=True)))
    assert abs(initial_age(older, sent, sent + 0.1) - 4.0) < 1e-6
    with_age = (("Age", "2"), ("Date", formatdate(1_800_000_000, usegmt=True)))
    assert abs(initial_age(with_age, sent, sent + 0.1) - 2.1) < 1e-6


def test_fresh_then_stale_then_revalidate_with_validators() -> None:
    headers = (("Cache-Control", "max-age=2"), ("ETag", '"v1"'))
    assert reuse(headers, later=1) is Reuse.FRESH
    assert reuse(headers, later=3) is Reuse.REVALIDATE
    assert reuse((("Cache-Control", "max-age=2"),), later=3) is Reuse.FETCH


def test_stale_while_revalidate_and_the_namespace_window_serve_stale() -> None:
    assert reuse((("Cache-Control", "max-age=2, stale-while-revalidate=30"),), later=10) is Reuse.STALE
    assert reuse((("Cache-Control", "max-age=2, stale-while-revalidate=30"),), later=40) is Reuse.FETCH
    assert reuse((("Cache-Control", "max-age=2"),), later=10, policy=Policy(stale_ttl=60)) is Reuse.STALE


def test_revalidation_directives_forbid_stale_whatever_allows_it() -> None:
    for cc in ("must-revalidate", "proxy-revalidate", "s-maxage=2", "no-cache"):
        headers = (("Cache-Control", f"max-age=2, stale-while-revalidate=60, {cc}"),)
        assert reuse(headers, later=10, policy=Policy(stale_ttl=60)) is Reuse.FETCH, cc
        assert not may_serve_on_error((), stored(headers), NOW + 10, Policy(stale_ttl=60)), cc
    assert may_serve_on_error((), stored((("Cache-Control", "max-age=2, stale-if-error=60"),)), NOW + 10, POLICY)


def test_response_no_cache_always_revalidates() -> None:
    assert reuse((("Cache-Control", "max-age=10000, no-cache"), ("ETag", '"a"'))) is Reuse.REVALIDATE


def test_request_directives() -> None:
    fresh = (("Cache-Control", "max-age=1500"), ("Age", "1000"))
    assert reuse(fresh, (("Cache-Control", "no-cache"),)) is Reuse.FETCH
    assert reuse(fresh, (("Pragma", "no-cache"),)) is Reuse.FETCH
    assert reuse(fresh, (("Cache-Control", "max-age=600"),)) is Reuse.FETCH
    assert reuse(fresh, (("Cache-Control", "min-fresh=1000"),)) is Reuse.FETCH
    assert reuse(fresh, (("Cache-Control", "max-age=2000"),)) is Reuse.FRESH
    stale = (("Cache-Control", "max-age=1500"), ("Age", "2000"))
    assert reuse(stale, (("Cache-Control", "max-stale=1000"),)) is Reuse.STALE
    assert reuse(stale, (("Cache-Control", "only-if-cached"),)) is Reuse.GATEWAY_TIMEOUT
    assert decide("GET", (("Cache-Control", "only-if-cached"),), None, NOW, POLICY).action is Reuse.GATEWAY_TIMEOUT
    assert decide("POST", (), stored(fresh), NOW, POLICY).forward is Forward.METHOD


def test_vary_selects_variants_with_normalised_values() -> None:
    assert vary_fields((("Vary", "Foo, Bar"), ("Vary", "foo"))) == ("foo", "bar")
    assert vary_fields((("Vary", ""), ("Vary", "*"))) is None
    fields = ("foo", "accept-language")
    one = variant_key((("Foo", "1, 2"), ("Accept-Language", "en, de")), fields)
    assert one == variant_key((("foo", " 1 ,  2 "), ("accept-language", "DE,EN")), fields)
    assert one == variant_key((("Foo", "1"), ("Foo", "2"), ("Accept-Language", "en, de")), fields)
    assert one != variant_key((("Foo", "1"), ("Accept-Language", "en, de")), fields)
    assert variant_key((), ("foo",)) != variant_key((("Foo", ""),), ("foo",))


def test_a_variant_stored_for_other_headers_is_a_vary_miss() -> None:
    response = stored((("Cache-Control", "max-age=60"), ("Vary", "Foo")), selecting=(("Foo", "1"),))
    assert decide("GET", (("Foo", "1"), ("Other", "x")), response, NOW, POLICY).action is Reuse.FRESH
    miss = decide("GET", (("Foo", "2"),), response, NOW, POLICY)
    assert (miss.action, miss.forward) == (Reuse.FETCH, Forward.VARY_MISS)
    assert decide("GET", (), response, NOW, POLICY).forward is Forward.VARY_MISS


def test_client_conditionals_answer_304_with_weak_etag_comparison() -> None:
    response = stored((("ETag", 'W/"abc"'), ("Last-Modified", date(-3000)), ("Content-Type", "text/plain")))
    assert client_not_modified((("If-None-Match", '"x", "abc"'),), response)
    assert client_not_modified((("If-None-Match", "*"),), response)
    assert not client_not_modified((("If-None-Match", '"x"'), ("If-Modified-Since", date(0))), response)
    assert client_not_modified((("If-Modified-Since", date(-2000)),), response)
    assert not client_not_modified((("If-Modified-Since", date(-4000)),), response)
    assert not_modified(response.headers) == (("ETag", 'W/"abc"'), ("Last-Modified", date(-3000)))


def test_revalidation_request_carries_the_stored_validators_not_the_clients() -> None:
    response = stored((("ETag", '"v1"'), ("Last-Modified", date(-10))))
    headers = revalidation_headers((("Accept", "x"), ("If-None-Match", '"other"'), ("Connection", "close")), response)
    assert headers == (("Accept", "x"), ("If-None-Match", '"v1"'), ("If-Modified-Since", date(-10)))


def test_a_304_updates_stored_headers_but_not_the_bodys_framing() -> None:
    old = (("Content-Length", "5"), ("Content-Type", "a"), ("X-A", "1"), ("ETag", '"e"'), ("Content-Encoding", "x"))
    new = (("Content-Length", "10"), ("Content-Type", "b"), ("ETag", '"e"'), ("Content-Encoding", "y"))
    merged = dict(merge_not_modified(old, new))
    assert merged == {"Content-Length": "5", "Content-Type": "b", "X-A": "1", "ETag": '"e"', "Content-Encoding": "x"}
    assert is_not_modified_for(stored(old), new)
    # The 304 answers the conditional request made for this very response: it freshens it, and
    # the stored ETag stays (the stored body is what it names).
    assert is_not_modified_for(stored(old), (("ETag", '"other"'),))
    assert dict(merge_not_modified(old, (("ETag", '"other"'),)))["ETag"] == '"e"'
    with_lm = stored((("Last-Modified", date(-100)),))
    assert is_not_modified_for(with_lm, (("Last-Modified", date(-100)),))
    assert not is_not_modified_for(with_lm, (("Last-Modified", date(-10)),))  # a newer representation


def test_a_304_never_brings_into_the_stored_response_a_field_its_private_or_no_cache_names() -> None:
    old = (("Cache-Control", 'max-age=60, private="Set-Cookie"'), ("ETag", '"e"'))
    merged = merge_not_modified(old, (("Set-Cookie", "session=alice"), ("ETag", '"e"'), ("X-A", "1")))
    assert merged == (*old, ("X-A", "1"))
    # A 304 whose own Cache-Control names a field: the stored one goes too.
    old = (("Cache-Control", "max-age=60"), ("X-Token", "t"), ("ETag", '"e"'))
    merged = merge_not_modified(old, (("Cache-Control", 'max-age=60, no-cache="X-Token"'),))
    assert merged == (("ETag", '"e"'), ("Cache-Control", 'max-age=60, no-cache="X-Token"'))


def test_a_304_without_age_gives_the_freshened_response_the_age_of_its_own_exchange() -> None:
    # Stored an hour-old copy (Age: 3000 from a cache before the origin) with max-age=3600; a
    # revalidation now, straight from the origin, starts its lifetime over: the old Age was the
    # old exchange's, not this one's (RFC 9111 §4.2.3).
    old = (("Cache-Control", "max-age=3600"), ("Age", "3000"), ("ETag", '"e"'), ("Date", date(-3600)))
    merged = merge_not_modified(old, (("ETag", '"e"'), ("Date", date(0))))
    assert ("Age", "3000") not in merged
    freshened = stored(merged)
    assert freshened.lifetime(POLICY) - freshened.age(NOW) > 3500
    # A 304 relayed by a cache that says how old it is: its Age counts.
    assert ("Age", "100") in merge_not_modified(old, (("Age", "100"), ("Date", date(0))))


def test_unsafe_methods_invalidate_the_uri_and_same_origin_locations() -> None:
    url = "http://cache.test/catalog/a?x=1"
    headers = (("Location", "b"), ("Content-Location", "http://evil.test/catalog/c"))
    assert invalidation_targets("POST", 201, url, headers) == [url, "http://cache.test/catalog/b"]
    assert invalidation_targets("M-SEARCH", 200, url, ()) == [url]
    assert invalidation_targets("POST", 500, url, headers) == []
    assert invalidation_targets("GET", 200, url, headers) == []


def test_cache_status_and_age_fields() -> None:
    assert cache_status(hit=True, ttl=12.7) == "herdless; hit; ttl=12"
    assert cache_status(hit=False, forward=Forward.URI_MISS, stored=True) == "herdless; fwd=uri-miss; stored"
    assert cache_status(hit=False, forward=Forward.STALE, forward_status=304, ttl=-1.5) == (
        "herdless; fwd=stale; fwd-status=304; ttl=-2"
    )
    out = with_cache_fields((("Age", "3"), ("Cache-Status", "origin-cdn; hit")), 7.9, "herdless; hit")
    assert out == (("Age", "7"), ("Cache-Status", "origin-cdn; hit, herdless; hit"))


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000))
def test_a_response_is_fresh_exactly_while_its_age_is_below_its_lifetime(
    max_age: int, origin_age: int, later: int
) -> None:
    headers = (("Cache-Control", f"max-age={max_age}"), ("Age", str(origin_age)))
    decision = decide("GET", (), stored(headers), NOW + later, POLICY)
    assert (decision.action is Reuse.FRESH) == (origin_age + later < max_age)
    assert decision.age == origin_age + later
