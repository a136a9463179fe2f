"""Header lists and HTTP dates: the representation every other module of the package takes.

``Headers`` is a tuple of ``(name, value)`` pairs in the order received, names as received
(lookups are case-insensitive), one pair per field line: a repeated field stays repeated, so
nothing a client or origin sent is lost or re-joined before it is forwarded.
"""

from __future__ import annotations

import re
from calendar import timegm
from collections.abc import Iterable
from email.utils import formatdate

Headers = tuple[tuple[str, str], ...]

# RFC 9110 §7.6.1 and the older hop-by-hop list (RFC 2616 §13.5.1); Proxy-Connection is de facto.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def header_list(pairs: Iterable[tuple[str, str]]) -> Headers:
    """Freeze any iterable of (name, value) pairs (a WSGI environ's, urllib3's) into ``Headers``."""
    return tuple((str(name), str(value)) for name, value in pairs)


def get_all(headers: Headers, name: str) -> list[str]:
    """Every value of the field ``name`` (case-insensitive), one per field line, in order."""
    lower = name.lower()
    return [v for n, v in headers if n.lower() == lower]


def get_first(headers: Headers, name: str) -> str | None:
    """The first field line's value of ``name``, or None when the field is absent."""
    lower = name.lower()
    for n, v in headers:
        if n.lower() == lower:
            return v
    return None


def has(headers: Headers, name: str) -> bool:
    """Whether the field ``name`` is present (even with an empty value)."""
    return get_first(headers, name) is not None


def combined(headers: Headers, name: str) -> str | None:
    """All field lines of ``name`` joined with ", " (RFC 9110 §5.3), or None when absent."""
    values = get_all(headers, name)
    return ", ".join(values) if values else None


def list_elements(headers: Headers, name: str) -> list[str]:
    """The comma-separated list elements of ``name`` over all its lines (RFC 9110 §5.6.1):
    trimmed, empty elements dropped, commas inside quoted strings kept."""
    out: list[str] = []
    for value in get_all(headers, name):
        out.extend(split_list(value))
    return out


def split_list(value: str) -> list[str]:
    """One field value's list elements: split on commas outside quoted strings, trimmed, empty
    elements dropped."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == "," and not quoted:
            element = "".join(current).strip(" \t")
            if element:
                out.append(element)
            current = []
        else:
            current.append(ch)
    element = "".join(current).strip(" \t")
    if element:
        out.append(element)
    return out


def without(headers: Headers, names: Iterable[str]) -> Headers:
    """``headers`` minus every line of the named fields (case-insensitive)."""
    drop = {n.lower() for n in names}
    return tuple((n, v) for n, v in headers if n.lower() not in drop)


def replaced(headers: Headers, name: str, value: str | None) -> Headers:
    """``headers`` with every line of ``name`` removed and, unless ``value`` is None, one line
    ``name: value`` put where the first one was (appended when there was none)."""
    lower = name.lower()
    out: list[tuple[str, str]] = []
    placed = value is None
    for n, v in headers:
        if n.lower() == lower:
            if not placed:
                out.append((name, value))  # type: ignore[arg-type]
                placed = True
            continue
        out.append((n, v))
    if not placed:
        out.append((name, value))  # type: ignore[arg-type]
    return tuple(out)


def connection_listed(headers: Headers) -> frozenset[str]:
    """The (lower-cased) field names the Connection header lists as hop-by-hop."""
    return frozenset(e.lower() for e in list_elements(headers, "connection") if _TOKEN_RE.match(e))


def strip_hop_by_hop(headers: Headers) -> Headers:
    """``headers`` without the hop-by-hop fields (RFC 9110 §7.6.1): the fixed list above and every
    field the Connection header names. What a proxy forwards, and what a cache may store."""
    drop = HOP_BY_HOP | connection_listed(headers)
    return tuple((n, v) for n, v in headers if n.lower() not in drop)


_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def well_formed(headers: Headers) -> Headers:
    """``headers`` fit to forward (RFC 9110 §5.1, §5.5): without the lines whose name is not a
    token, control characters (but HTAB) in values replaced by SP. What an origin sends goes
    through here before it is stored or answered: a server refuses to write a malformed line."""
    return tuple((n, _CTL.sub(" ", v)) for n, v in headers if _TOKEN_RE.match(n))


_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_IMF = re.compile(
    r"^\s*(?:[A-Za-z]{3},?\s+)?(\d{1,2})[\s-]+([A-Za-z]{3})[\s-]+(\d{2,4})\s+(\d{1,2}):(\d{2}):(\d{2})\s*(?:GMT|UTC|UT|Z)?\s*$",
    re.I,
)
_RFC850 = re.compile(
    r"^\s*[A-Za-z]+,\s*(\d{1,2})-([A-Za-z]{3})-(\d{2,4})\s+(\d{1,2}):(\d{2}):(\d{2})\s*(?:GMT|UTC)?\s*$",
    re.I,
)
_ASCTIME = re.compile(r"^\s*[A-Za-z]{3}\s+([A-Za-z]{3})\s+(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})\s+(\d{4})\s*$")


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date (IMF-fixdate, obsolete RFC 850 or asctime, RFC 9110 §5.6.7), case-insensitive,
    as POSIX seconds; None when absent or unparseable (the caller decides what invalid means:
    an invalid Expires is "already expired", an invalid Date is "none")."""
    if value is None:
        return None
    parts: tuple[str, ...]
    m = _IMF.match(value) or _RFC850.match(value)
    if m:
        day, mon, year, hh, mm, ss = m.groups()
    else:
        a = _ASCTIME.match(value)
        if not a:
            return None
        mon, day, hh, mm, ss, year = a.groups()
    parts = (day, mon, year, hh, mm, ss)
    month = _MONTHS.get(parts[1].lower())
    if month is None:
        return None
    y = int(year)
    if len(year) == 2:  # RFC 9110 §5.6.7: more than 50 years ahead means the past century
        y += 2000 if y < 70 else 1900
    try:
        h, mi, s, d = int(hh), int(mm), int(ss), int(day)
        if not (1 <= d <= 31 and h <= 23 and mi <= 59 and s <= 60):
            return None
        return float(timegm((y, month, d, h, mi, s, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def format_http_date(seconds: float) -> str:
    """POSIX seconds as an IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
    return formatdate(seconds, usegmt=True)
