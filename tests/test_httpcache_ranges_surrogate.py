"""Byte ranges from a stored complete response, Surrogate-Control, and serving stale when the
origin cannot be reached (pure, no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.httpcache.lifetime import Policy, StoredResponse, freshness_lifetime
from shared.httpcache.ranges import ByteRange, RangeOutcome, partial_headers, select_range
from shared.httpcache.reuse import may_serve_on_error
from shared.httpcache.status import with_cache_fields
from shared.httpcache.storage import NotStored, storable
from shared.httpcache.surrogate import CAPABILITY, parse_surrogate_control, with_surrogate_capability

BODY = b"0123456789"


def rng(value: str, **kw: str) -> tuple[RangeOutcome, ByteRange | None]:
    headers = (("Range", value), *((k.replace("_", "-"), v) for k, v in kw.items()))
    return select_range("GET", headers, 200, (("ETag", '"s"'),), len(BODY))


def test_single_byte_ranges_are_cut_from_the_stored_body() -> None:
    assert rng("bytes=0-1") == (RangeOutcome.PARTIAL, ByteRange(0, 1, 10))
    assert rng("bytes=1-") == (RangeOutcome.PARTIAL, ByteRange(1, 9, 10))
    assert rng("bytes=-1") == (RangeOutcome.PARTIAL, ByteRange(9, 9, 10))
    assert rng("bytes=5-100") == (RangeOutcome.PARTIAL, ByteRange(5, 9, 10))
    outcome, byte_range = rng("bytes=-3")
    assert byte_range is not None and byte_range.slice(BODY) == b"789"
    headers = partial_headers((("Content-Length", "10"), ("A", "1")), ByteRange(0, 1, 10))
    assert headers == (("A", "1"), ("Content-Range", "bytes 0-1/10"))


def test_what_a_cache_cannot_cut_is_answered_whole_or_refused() -> None:
    assert rng("bytes=0-1,3-4")[0] is RangeOutcome.FULL  # several ranges
    assert rng("items=0-1")[0] is RangeOutcome.FULL
    assert rng("bytes=5-2")[0] is RangeOutcome.FULL
    assert rng("bytes=0-1", If_Range='"other"')[0] is RangeOutcome.FULL
    assert rng("bytes=0-1", If_Range='"s"')[0] is RangeOutcome.PARTIAL
    assert rng("bytes=10-")[0] is RangeOutcome.UNSATISFIABLE
    assert select_range("GET", (("Range", "bytes=0-1"),), 404, (), 10)[0] is RangeOutcome.FULL


@given(st.integers(0, 30), st.integers(0, 30), st.integers(1, 30))
def test_a_partial_range_always_lies_inside_the_body(first: int, last: int, length: int) -> None:
    outcome, byte_range = select_range("GET", (("Range", f"bytes={first}-{last}"),), 200, (), length)
    if outcome is RangeOutcome.PARTIAL:
        assert byte_range is not None and 0 <= byte_range.first <= byte_range.last < length


def test_surrogate_control_for_us_or_everyone_overrides_cache_control() -> None:
    assert parse_surrogate_control((("Surrogate-Control", "max-age=60;herdless"),)).max_age == 60
    assert not parse_surrogate_control((("Surrogate-Control", "max-age=60;other"),)).present
    assert parse_surrogate_control((("Surrogate-Control", "foobar, MaX-aGe=60"),)).max_age == 60
    headers = (("Cache-Control", "no-store"), ("Surrogate-Control", "max-age=100"))
    assert storable("GET", (), 200, headers).storable
    assert freshness_lifetime(200, headers, Policy()) == 100
    no_store = (("Cache-Control", "max-age=100"), ("Surrogate-Control", "no-store"))
    assert storable("GET", (), 200, no_store).reason is NotStored.NO_STORE
    assert (
        freshness_lifetime(200, (("Cache-Control", "max-age=3600"), ("Surrogate-Control", "max-age=1")), Policy()) == 1
    )


def test_the_capability_is_announced_and_the_control_header_stays_with_us() -> None:
    headers = with_surrogate_capability((("Accept", "x"), ("Surrogate-Capability", 'cdn="Surrogate/1.0"')))
    assert headers == (("Accept", "x"), ("Surrogate-Capability", f'cdn="Surrogate/1.0", {CAPABILITY}'))
    answered = with_cache_fields((("Surrogate-Control", "max-age=5"), ("A", "1")), 0, "herdless; hit")
    assert answered == (("A", "1"), ("Age", "0"), ("Cache-Status", "herdless; hit"))


def test_an_unreachable_origin_lets_stale_be_served_unless_the_response_forbids_it() -> None:
    now = 1_800_000_000.0
    stale = StoredResponse(200, (("Cache-Control", "max-age=2"),), now - 10, now - 10)
    assert may_serve_on_error((), stale, now, Policy(), disconnected=True)
    assert not may_serve_on_error((), stale, now, Policy())  # an error status needs stale-if-error
    assert not may_serve_on_error((), stale, now, Policy(stale_if_disconnected=5), disconnected=True)
    for cc in ("must-revalidate", "proxy-revalidate", "s-maxage=2", "no-cache"):
        forbidden = StoredResponse(200, (("Cache-Control", f"max-age=2, {cc}"),), now - 10, now - 10)
        assert not may_serve_on_error((), forbidden, now, Policy(), disconnected=True), cc
