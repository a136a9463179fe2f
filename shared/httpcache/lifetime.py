"""How long a stored response is fresh (RFC 9111 §4.2.1, §4.2.2) and how old it is (§4.2.3).

Times are POSIX seconds (floats) on one clock, the engine's; ages and lifetimes are seconds.
A stored response remembers when the origin request that produced it was sent
(``request_time``) and when its answer arrived (``response_time``); its age is then the
*corrected initial age* computed once at storage time plus the time it has been resident.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property

from shared.httpcache.cachecontrol import DELTA_CAP, CacheControl, parse_cache_control
from shared.httpcache.fields import Headers, get_all, get_first, parse_http_date, split_list
from shared.httpcache.surrogate import parse_surrogate_control

# RFC 9110 §15.1: statuses a cache may store and reuse without explicit freshness.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
_DIGITS = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class Policy:
    """The operator's part in the decisions, from a proxy namespace's settings.

    ``default_ttl``: fresh life (s) of a storable response that carries no freshness
    information at all (no s-maxage, max-age or Expires, no Last-Modified for the heuristic);
    0 (the default) is RFC 9111's behaviour: such a response is stored stale.
    ``stale_ttl``: how long (s) past its freshness a response may still be served stale while it
    is refreshed in the background, on top of what its own stale-while-revalidate allows; never
    where must-revalidate, proxy-revalidate, s-maxage or no-cache forbid serving stale.
    ``heuristic_fraction``/``heuristic_cap``: the heuristic freshness of §4.2.2, a fraction of
    the time since Last-Modified, capped (s).
    ``stale_if_disconnected``: how long (s) past its freshness a response may be served when the
    origin cannot be reached at all (RFC 9111 §4.2.4 allows it; the engine's outage extension,
    ``STALE_IF_ERROR_SECONDS``, is the natural value), where the response does not forbid it."""

    default_ttl: float = 0.0
    stale_ttl: float = 0.0
    stale_if_disconnected: float = 3600.0
    heuristic_fraction: float = 0.1
    heuristic_cap: float = 86400.0


@dataclass(frozen=True)
class StoredResponse:
    """A response as the cache holds it: status, stored header list (``storage.stored_headers``),
    when it was requested and received (engine clock, s), the method that produced it and the
    request header lines its Vary names (for Vary matching and for replaying the request)."""

    status: int
    headers: Headers
    request_time: float
    response_time: float
    method: str = "GET"
    selecting_headers: Headers = field(default=())

    @cached_property
    def cache_control(self) -> CacheControl:
        return parse_cache_control(self.headers)

    @cached_property
    def initial_age(self) -> float:
        return initial_age(self.headers, self.request_time, self.response_time)

    def age(self, now: float) -> float:
        """Current age (§4.2.3) at ``now``."""
        return current_age(self.initial_age, self.response_time, now)

    def lifetime(self, policy: Policy) -> float:
        """Freshness lifetime under ``policy`` (``freshness_lifetime``)."""
        return freshness_lifetime(self.status, self.headers, policy, self.response_time)


def age_value(headers: Headers) -> float:
    """The Age field's value (s): 0 when absent; the first member of a list; an invalid value
    (not digits: negative, decimal, parameters) is taken as "very old" (2^31), so the response is
    stale rather than trusted too fresh."""
    lines = get_all(headers, "age")
    if not lines:
        return 0.0
    members = [m for line in lines for m in split_list(line)]
    first = members[0] if members else ""
    if not _DIGITS.match(first):
        return float(DELTA_CAP)
    return float(min(int(first), DELTA_CAP))


def date_value(headers: Headers) -> float | None:
    """The Date field (s), or None when absent or invalid."""
    return parse_http_date(get_first(headers, "date"))


def initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    """The corrected initial age of a response (§4.2.3): the larger of its apparent age
    (response_time - Date, never negative) and Age corrected by the request's round trip.

    Date has a resolution of one second (RFC 9110 §5.6.7): a response made 100 ms after our
    request was sent at 12:00:00.9 says `Date: 12:00:00` whether it was made at .9 or at .0,
    and response_time - Date would make it up to a second older than it is. A Date no earlier
    than the second in which the request was sent says the response was made during this
    exchange, so its apparent age is at most the round trip, which the corrected Age already
    counts. Counted in full, that truncation took half a second on average from every
    revalidation of a 5 s max-age (about 1.1x the origin calls a refresh-on-expiry cache makes);
    a Date from an earlier second (a response an upstream cache kept) still counts whole."""
    date = date_value(headers)
    apparent = max(0.0, response_time - date) if date is not None and date < math.floor(request_time) else 0.0
    corrected = age_value(headers) + max(0.0, response_time - request_time)
    return max(apparent, corrected)


def current_age(corrected_initial_age: float, response_time: float, now: float) -> float:
    """Age at ``now`` of a response received at ``response_time`` (§4.2.3)."""
    return corrected_initial_age + max(0.0, now - response_time)


def explicit_lifetime(headers: Headers) -> float | None:
    """Explicit freshness lifetime (§4.2.1) for a shared cache: a Surrogate-Control max-age meant
    for this cache, else s-maxage, else max-age, else Expires minus Date (an invalid Expires is
    0); None when the response carries none of them, or an Expires without a valid Date (then
    ``freshness_lifetime`` measures it from the response's arrival)."""
    surrogate = parse_surrogate_control(headers)
    if surrogate.max_age is not None:
        return float(surrogate.max_age)
    cc = parse_cache_control(headers)
    if cc.s_maxage is not None:
        return float(cc.s_maxage)
    if cc.max_age is not None:
        return float(cc.max_age)
    expires_lines = get_all(headers, "expires")
    if expires_lines:
        expires = parse_http_date(expires_lines[0])
        if expires is None:
            return 0.0
        date = date_value(headers)
        if date is None:
            return None  # measured against the response time by the caller: see freshness_lifetime
        return max(0.0, expires - date)
    return None


def heuristic_lifetime(status: int, headers: Headers, policy: Policy) -> float | None:
    """Heuristic freshness (§4.2.2): ``policy.heuristic_fraction`` of (Date - Last-Modified),
    capped at ``policy.heuristic_cap``, for heuristically cacheable statuses (or any status made
    cacheable by ``public``); None when it does not apply."""
    cc = parse_cache_control(headers)
    if status not in HEURISTICALLY_CACHEABLE and not cc.public:
        return None
    last_modified = parse_http_date(get_first(headers, "last-modified"))
    if last_modified is None:
        return None
    date = date_value(headers)
    if date is None:
        return None
    return min(policy.heuristic_cap, max(0.0, (date - last_modified) * policy.heuristic_fraction))


def freshness_lifetime(status: int, headers: Headers, policy: Policy, response_time: float | None = None) -> float:
    """The freshness lifetime (s) of a response for a shared cache: explicit (Surrogate-Control
    max-age > s-maxage > max-age > Expires - Date), else heuristic (Last-Modified), else
    ``policy.default_ttl``. An Expires without a (valid) Date is measured from ``response_time``
    (the response's arrival) when given, else it means 0."""
    explicit = explicit_lifetime(headers)
    if explicit is not None:
        return explicit
    if get_all(headers, "expires"):  # a valid Expires but no usable Date
        expires = parse_http_date(get_all(headers, "expires")[0])
        if expires is not None and response_time is not None:
            return max(0.0, expires - response_time)
        return 0.0
    heuristic = heuristic_lifetime(status, headers, policy)
    if heuristic is not None:
        return heuristic
    return float(policy.default_ttl)


def has_freshness_information(status: int, headers: Headers) -> bool:
    """Whether the response says anything about its freshness: s-maxage, max-age, Expires, or a
    Last-Modified usable for the heuristic. ``Policy.default_ttl`` applies only when it does not."""
    cc = parse_cache_control(headers)
    return (
        parse_surrogate_control(headers).max_age is not None
        or cc.s_maxage is not None
        or cc.max_age is not None
        or bool(get_all(headers, "expires"))
        or heuristic_lifetime(status, headers, Policy()) is not None
    )
