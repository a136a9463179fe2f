"""How long a stored value lives: the namespace's fixed TTLs, or the origin's Cache-Control.

A namespace with ``freshness = "fixed"`` (the default) gives every value the same three
lifetimes: fresh for ``cache_ttl_seconds``, then served stale for ``stale_ttl_seconds``, and
kept ``stale_if_error_seconds`` longer while the origin fails. With ``freshness = "origin"`` each
answer sets its own, as a shared HTTP cache would (RFC 9111, RFC 5861):

- fresh life: ``s-maxage``, else ``max-age``, else ``Expires`` minus ``Date``; ``no-cache``
  means 0 (refresh at the next read; the stale value is still served meanwhile);
- stale window: ``stale-while-revalidate``;
- outage extension: ``stale-if-error``;

each clamped to the namespace's ``min_*``/``max_*`` bounds. What the origin leaves out falls
back to the namespace setting (unclamped: the operator chose it). ``no-store`` or ``private``
makes the answer uncacheable: it is handed to the readers waiting for it and not stored. A
Cache-Control header that does not parse is ignored as a whole (the namespace's lifetimes
apply) and reported, so the engine can log it once per origin.

Pure functions, no I/O: the worker calls them with an origin answer's headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from shared.namespaces import Namespace
from shared.protocol import Freshness

# Directives whose argument is delta-seconds (RFC 9111 1.2.2).
_SECONDS = ("max-age", "s-maxage", "stale-while-revalidate", "stale-if-error")
# RFC 9111 1.2.2: a delta-seconds too large to represent is taken as 2^31.
_SECONDS_CAP = 2**31
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# One list element: a directive name, optionally "=" and a token or a quoted string.
_DIRECTIVE = re.compile(rf'[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*(?:({_TOKEN})|"((?:[^"\\]|\\.)*)"))?[ \t]*(,|$)')
_EMPTY_ELEMENT = re.compile(r"[ \t]*,")


class MalformedCacheControl(ValueError):
    """The origin's Cache-Control header does not parse; the message says where."""


@dataclass(frozen=True)
class CacheHeaders:
    """The headers of an origin answer that decide its lifetimes (None when absent)."""

    cache_control: str | None = None
    expires: str | None = None
    date: str | None = None

    @property
    def empty(self) -> bool:
        return self.cache_control is None and self.expires is None


@dataclass(frozen=True)
class Lifetimes:
    """How long a stored value is fresh, then servable stale, then kept through an outage (ms)."""

    soft_ttl_ms: int
    stale_ms: int
    stale_if_error_ms: int


@dataclass(frozen=True)
class CachePolicy:
    """What to do with one origin answer: store it (with these lifetimes) or only hand it over.
    `malformed` says why the origin's Cache-Control was ignored, when it was."""

    storable: bool
    lifetimes: Lifetimes
    malformed: str | None = None


def fixed_lifetimes(ns: Namespace) -> Lifetimes:
    """The namespace's own lifetimes; a strategy that never serves stale values gets no window."""
    return Lifetimes(ns.soft_ttl_ms, ns.stale_ttl_ms, int(ns.stale_if_error_seconds * 1000))


def parse_cache_control(header: str) -> dict[str, str | None]:
    """Directive name (lower case) -> argument (None when it has none). Raises
    MalformedCacheControl for anything that is not a list of `name[=token|"quoted"]`, for a
    delta-seconds directive whose argument is not a whole number, and for a directive given
    twice with different arguments."""
    directives: dict[str, str | None] = {}
    pos = 0
    while pos < len(header):
        empty = _EMPTY_ELEMENT.match(header, pos)
        if empty:  # "a, , b" has an empty element, which a list may hold
            pos = empty.end()
            continue
        if not header[pos:].strip(" \t"):
            break
        m = _DIRECTIVE.match(header, pos)
        if not m or m.end() == pos:
            raise MalformedCacheControl(f"cannot parse {header[pos : pos + 40]!r}")
        name = m.group(1).lower()
        value = m.group(2) if m.group(2) is not None else m.group(3)
        if value is not None and m.group(3) is not None:
            value = re.sub(r"\\(.)", r"\1", value)
        if name in _SECONDS and (value is None or not value.isdigit()):
            raise MalformedCacheControl(f"{name} needs a whole number of seconds, got {value!r}")
        if name in directives and directives[name] != value:
            raise MalformedCacheControl(f"{name} is given twice with different values")
        directives[name] = value
        pos = m.end()
    return directives


def _seconds(value: str | None) -> int:
    return min(int(value or 0), _SECONDS_CAP)


def _expires_seconds(expires: str, date: str | None, now_s: float) -> float:
    """Expires minus Date (now when Date is absent or invalid); an invalid Expires means
    "already expired" (RFC 9111 5.3)."""
    try:
        expires_at = parsedate_to_datetime(expires).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0
    base = now_s
    if date:
        try:
            base = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            base = now_s
    return max(0.0, expires_at - base)


def _clamp(value_s: float, low_s: float, high_s: float) -> int:
    return int(min(max(value_s, low_s), high_s) * 1000)


def cache_policy(ns: Namespace, headers: CacheHeaders, now_s: float) -> CachePolicy:
    """The policy for one origin answer under the namespace's freshness mode. `now_s` (Unix
    seconds) stands in for a missing Date when Expires is used."""
    fixed = fixed_lifetimes(ns)
    if ns.freshness is not Freshness.ORIGIN:
        return CachePolicy(True, fixed)
    try:
        directives = parse_cache_control(headers.cache_control or "")
    except MalformedCacheControl as exc:
        return CachePolicy(True, fixed, malformed=str(exc))
    if "no-store" in directives or "private" in directives:
        return CachePolicy(False, fixed)
    ttl_s: float | None = None
    if "no-cache" in directives:
        ttl_s = 0.0
    elif "s-maxage" in directives:
        ttl_s = _seconds(directives["s-maxage"])
    elif "max-age" in directives:
        ttl_s = _seconds(directives["max-age"])
    elif headers.expires is not None:
        ttl_s = _expires_seconds(headers.expires, headers.date, now_s)
    soft_ttl_ms = fixed.soft_ttl_ms if ttl_s is None else _clamp(ttl_s, ns.min_ttl_seconds, ns.max_ttl_seconds)
    stale_ms = fixed.stale_ms
    if "stale-while-revalidate" in directives and ns.serves_stale:
        stale_ms = _clamp(_seconds(directives["stale-while-revalidate"]), ns.min_stale_seconds, ns.max_stale_seconds)
    sie_ms = fixed.stale_if_error_ms
    if "stale-if-error" in directives:
        sie_ms = _clamp(
            _seconds(directives["stale-if-error"]), ns.min_stale_if_error_seconds, ns.max_stale_if_error_seconds
        )
    return CachePolicy(True, Lifetimes(soft_ttl_ms, stale_ms, sie_ms))
