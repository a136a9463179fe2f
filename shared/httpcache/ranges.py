"""Range requests answered from a stored complete response (RFC 9110 §14).

A cache that holds a complete 200 may answer a GET with a single byte range itself: a 206 with
the stored headers and ``Content-Range``. Anything else (several ranges, another unit, a
syntax error, an ``If-Range`` that does not match, a stored status other than 200) is answered
with the whole stored response, as a server that ignores Range would; a range beyond the end is a
416. Partial (206) responses from the origin are not stored (``storage.storable``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from shared.httpcache.fields import Headers, get_all, get_first, parse_http_date, replaced, without

_SPEC = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.I)


class RangeOutcome(StrEnum):
    FULL = "full"  # no (usable) Range: answer the whole response
    PARTIAL = "partial"  # answer 206 with ``ByteRange``
    UNSATISFIABLE = "unsatisfiable"  # answer 416


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``first`` to ``last`` inclusive of a representation of ``length`` bytes."""

    first: int
    last: int
    length: int

    def slice(self, body: bytes) -> bytes:
        return body[self.first : self.last + 1]


def _if_range_holds(request_headers: Headers, stored_headers: Headers) -> bool:
    value = get_first(request_headers, "if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"'):  # an entity-tag: strong comparison
        etag = get_first(stored_headers, "etag")
        return etag is not None and not etag.startswith("W/") and etag.strip() == value
    date = parse_http_date(value)
    last_modified = parse_http_date(get_first(stored_headers, "last-modified"))
    return date is not None and last_modified is not None and date == last_modified


def select_range(
    method: str, request_headers: Headers, status: int, stored_headers: Headers, length: int
) -> tuple[RangeOutcome, ByteRange | None]:
    """What a GET with ``request_headers`` gets from a stored ``status`` response of ``length``
    bytes: the whole of it, one byte range of it, or a 416 (see the module docstring)."""
    lines = get_all(request_headers, "range")
    if (
        method.upper() != "GET"
        or status != 200
        or len(lines) != 1
        or not _if_range_holds(request_headers, stored_headers)
    ):
        return RangeOutcome.FULL, None
    m = _SPEC.match(lines[0])
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return RangeOutcome.FULL, None
    first_s, last_s = m.group(1), m.group(2)
    if first_s == "":  # suffix: the last N bytes
        suffix = int(last_s)
        if suffix == 0:
            return RangeOutcome.UNSATISFIABLE, None
        first, last = max(0, length - suffix), length - 1
    else:
        first = int(first_s)
        last = length - 1 if last_s == "" else min(int(last_s), length - 1)
        if last_s != "" and int(last_s) < first:
            return RangeOutcome.FULL, None  # invalid range-spec: ignore the header
    if length == 0 or first >= length:
        return RangeOutcome.UNSATISFIABLE, None
    return RangeOutcome.PARTIAL, ByteRange(first, last, length)


def partial_headers(stored_headers: Headers, byte_range: ByteRange) -> Headers:
    """The header list of the 206 answering ``byte_range``: the stored one with Content-Range set
    and Content-Length removed (the caller frames the slice)."""
    headers = without(stored_headers, ("content-length",))
    return replaced(headers, "Content-Range", f"bytes {byte_range.first}-{byte_range.last}/{byte_range.length}")


def unsatisfiable_headers(length: int) -> Headers:
    """The header list of a 416 for a representation of ``length`` bytes."""
    return (("Content-Range", f"bytes */{length}"),)
