"""Cache-Control, dates, Age and header lists as a shared cache reads them (pure, no I/O)."""

from __future__ import annotations

from email.utils import formatdate

from hypothesis import given
from hypothesis import strategies as st

from shared.httpcache.cachecontrol import ANY_STALENESS, DELTA_CAP, parse_cache_control, request_cache_control
from shared.httpcache.fields import parse_http_date, split_list, strip_hop_by_hop
from shared.httpcache.lifetime import age_value


def cc(*lines: str):  # noqa: ANN201
    return parse_cache_control(tuple(("Cache-Control", line) for line in lines))


def test_directive_names_are_case_insensitive_and_lines_combine() -> None:
    parsed = cc("MaX-aGe=3600", "No-StOrE")
    assert parsed.max_age == 3600 and parsed.no_store


def test_a_quoted_string_never_splits_into_directives() -> None:
    assert cc('extension="max-age=3600", max-age=1').max_age == 1
    assert cc('max-age=1, extension="max-age=3600"').max_age == 1
    assert cc('extension="max-age=3600"').max_age is None


def test_the_first_occurrence_of_a_repeated_directive_wins() -> None:
    assert cc("max-age=1800, max-age=1").max_age == 1800
    assert cc("max-age=1", "max-age=1800").max_age == 1


def test_invalid_max_age_makes_the_response_stale() -> None:
    for bad in ("max-age='3600'", "max-age=-3600", "max-age=1.5", "max-age", "max-age =3600", "max-age=a1"):
        assert cc(bad).max_age == 0, bad
    assert cc("max-age=003600").max_age == 3600
    assert cc('max-age="3600"').max_age == 3600


def test_delta_seconds_beyond_2_31_are_capped() -> None:
    assert cc("max-age=99999999999").max_age == DELTA_CAP
    assert cc("s-maxage=2147483649").s_maxage == DELTA_CAP


def test_qualified_no_cache_and_private_name_fields_and_stay_storable() -> None:
    parsed = cc('no-cache="A, b", private="Set-Cookie"')
    assert not parsed.no_cache and parsed.no_cache_fields == {"a", "b"}
    assert not parsed.private and parsed.private_fields == {"set-cookie"}
    assert cc("no-cache").no_cache and cc("private").private


def test_s_maxage_and_revalidate_directives_forbid_stale() -> None:
    assert cc("s-maxage=2").forbids_stale and cc("must-revalidate").forbids_stale
    assert cc("proxy-revalidate").forbids_stale and not cc("max-age=2, stale-while-revalidate=9").forbids_stale


def test_request_max_stale_without_argument_accepts_any_staleness_and_pragma_means_no_cache() -> None:
    assert request_cache_control((("Cache-Control", "max-stale"),)).max_stale == ANY_STALENESS
    assert request_cache_control((("Pragma", "no-cache"),)).no_cache
    assert not request_cache_control((("Pragma", "no-cache"), ("Cache-Control", "max-age=5"))).no_cache


@given(st.text(max_size=60))
def test_any_cache_control_text_parses_without_raising(text: str) -> None:
    parsed = cc(text)
    assert parsed.max_age is None or 0 <= parsed.max_age <= DELTA_CAP


def test_http_dates_in_the_three_formats_and_wrong_case() -> None:
    t = parse_http_date("Thu, 18 Aug 2050 02:01:18 GMT")
    assert t is not None
    for v in ("Thursday, 18-Aug-50 02:01:18 GMT", "THU, 18 AUG 2050 02:01:18 gMT", "Thu Aug 18 02:01:18 2050"):
        assert parse_http_date(v) == t, v
    assert parse_http_date("0") is None and parse_http_date("foo") is None
    assert parse_http_date(formatdate(1_800_000_000, usegmt=True)) == 1_800_000_000


def test_age_takes_the_first_member_and_distrusts_invalid_values() -> None:
    assert age_value(()) == 0
    assert age_value((("Age", "0,7200"),)) == 0
    assert age_value((("Age", "7200"), ("Age", "0"))) == 7200
    for bad in ("abc", "-7200", "7200.0", "7200;foo=bar"):
        assert age_value((("Age", bad),)) == DELTA_CAP, bad


def test_hop_by_hop_and_connection_listed_fields_are_stripped() -> None:
    headers = (("Connection", "a, B"), ("a", "1"), ("b", "2"), ("c", "3"), ("Keep-Alive", "x"), ("TE", "y"))
    assert strip_hop_by_hop(headers) == (("c", "3"),)


def test_split_list_keeps_commas_inside_quotes() -> None:
    assert split_list(' a , "b,c" ,, d') == ["a", '"b,c"', "d"]
