"""May a shared cache store this response (RFC 9111 §3, §3.5), and which of its fields.

``storable`` answers for one origin exchange; ``stored_headers`` is the header list to keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.httpcache.cachecontrol import parse_cache_control, request_cache_control
from shared.httpcache.fields import Headers, has, strip_hop_by_hop, without
from shared.httpcache.lifetime import HEURISTICALLY_CACHEABLE
from shared.httpcache.surrogate import parse_surrogate_control
from shared.httpcache.vary import vary_fields

# Statuses whose semantics this cache understands (for ``must-understand``, RFC 9111 §5.2.2.3).
UNDERSTOOD_STATUSES = frozenset(
    {200, 203, 204, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 410, 414, 500, 501, 502, 503, 504}
)
# Methods whose responses are stored (HEAD is answered from a stored GET, never stored alone).
STORABLE_METHODS = frozenset({"GET"})


class NotStored(StrEnum):
    """Why a response is not stored (bounded: usable as a metric label)."""

    METHOD = "method"  # not a GET
    STATUS = "status"  # 1xx, 206 (partial content is not stored), 304, or a status not understood
    NO_STORE = "no-store"  # request or response no-store
    PRIVATE = "private"  # response private (unqualified)
    AUTHORIZATION = "authorization"  # request with Authorization, response not public/s-maxage/must-revalidate
    NOT_CACHEABLE = "not-cacheable"  # no explicit freshness, not public, status not heuristically cacheable
    VARY_STAR = "vary-star"  # Vary: * can never be reused
    SET_COOKIE = "set-cookie"  # a Set-Cookie without explicit freshness: one client's cookie


@dataclass(frozen=True)
class Storability:
    """The storage decision: ``storable``, else ``reason`` says why not."""

    storable: bool
    reason: NotStored | None = None


_STORE = Storability(True)


def storable(method: str, request_headers: Headers, status: int, response_headers: Headers) -> Storability:
    """Whether a shared cache may store the response ``status``/``response_headers`` to a
    ``method`` request with ``request_headers`` (RFC 9111 §3):

    - the method is GET; the status is final, not 206 (partial responses are not stored) nor
      304; a response with ``must-understand`` only when its status is understood (and then its
      ``no-store`` is ignored, §5.2.2.3);
    - neither request nor response says ``no-store``; the response is not ``private``;
    - a request with ``Authorization`` only when the response says ``public``, ``s-maxage`` or
      ``must-revalidate`` (§3.5);
    - the response has ``public``, ``max-age``, ``s-maxage`` or ``Expires``, or a heuristically
      cacheable status (RFC 9110 §15.1);
    - ``Vary: *`` is not stored: it could never be reused (§4.1);
    - a response with ``Set-Cookie`` only with explicit freshness (``public``, ``max-age``,
      ``s-maxage``, ``Expires``): RFC 9111 would store it heuristically too, but then one
      client's session cookie answers everyone, which no origin that set it asked for;
    - Surrogate-Control meant for this cache (``surrogate``) comes first: its ``no-store``
      forbids storing, its ``max-age`` allows it whatever Cache-Control's no-store,
      must-understand or freshness say (private and the Authorization rule still hold)."""
    if method.upper() not in STORABLE_METHODS:
        return Storability(False, NotStored.METHOD)
    if status < 200 or status in (206, 304) or status > 599:
        return Storability(False, NotStored.STATUS)
    surrogate = parse_surrogate_control(response_headers)
    if surrogate.no_store:
        return Storability(False, NotStored.NO_STORE)
    if request_cache_control(request_headers).no_store:
        return Storability(False, NotStored.NO_STORE)
    if vary_fields(response_headers) is None:
        return Storability(False, NotStored.VARY_STAR)
    cc = parse_cache_control(response_headers)
    if cc.private:
        return Storability(False, NotStored.PRIVATE)
    if has(request_headers, "authorization") and not (cc.public or cc.s_maxage is not None or cc.must_revalidate):
        return Storability(False, NotStored.AUTHORIZATION)
    if surrogate.max_age is not None:
        return _STORE  # the origin told this very cache how long to keep it
    if cc.must_understand:
        if status not in UNDERSTOOD_STATUSES:
            return Storability(False, NotStored.STATUS)
    elif cc.no_store:
        return Storability(False, NotStored.NO_STORE)
    explicit = cc.public or cc.max_age is not None or cc.s_maxage is not None or has(response_headers, "expires")
    if not explicit and status not in HEURISTICALLY_CACHEABLE:
        return Storability(False, NotStored.NOT_CACHEABLE)
    if not explicit and has(response_headers, "set-cookie"):
        return Storability(False, NotStored.SET_COOKIE)
    return _STORE


def stored_headers(response_headers: Headers) -> Headers:
    """The header list a shared cache keeps of a response (§3.1): without hop-by-hop fields
    (including those the Connection header lists), without the fields a ``private="..."``
    names (a shared cache must not store them) or a ``no-cache="..."`` names (they may not be
    reused without revalidation: dropping them is the simple way to obey)."""
    cc = parse_cache_control(response_headers)
    kept = strip_hop_by_hop(response_headers)
    return without(kept, cc.private_fields | cc.no_cache_fields)
