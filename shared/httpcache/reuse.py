"""May a stored response answer this request (RFC 9111 §4, §4.2.4; RFC 5861)?

``decide`` takes the request and the candidate stored response (the one its URI and Vary
select, or None) and says what the cache does:

- ``FRESH``: answer from the stored response, the origin is not contacted;
- ``STALE``: answer from the stored response although it is stale (allowed by its
  stale-while-revalidate, the namespace's ``stale_ttl`` or the request's max-stale) and
  refresh it in the background;
- ``REVALIDATE``: ask the origin with a conditional request built from the stored validators
  (``conditional.revalidation_headers``) and answer from the stored response on a 304;
- ``FETCH``: ask the origin unconditionally (nothing stored, Vary mismatch, or nothing to
  validate with);
- ``GATEWAY_TIMEOUT``: the request says ``only-if-cached`` and the cache cannot answer: 504.

Stale responses are never served without validation when the response says
``must-revalidate``, ``proxy-revalidate``, ``s-maxage`` or ``no-cache``, nor when the request
says ``no-cache`` or bounds the age (``max-age``) or freshness (``min-fresh``) it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.httpcache.cachecontrol import CacheControl, request_cache_control
from shared.httpcache.fields import Headers, has
from shared.httpcache.lifetime import Policy, StoredResponse
from shared.httpcache.vary import matches, vary_fields


class Reuse(StrEnum):
    """What the cache does with a request (see the module docstring)."""

    FRESH = "fresh"
    STALE = "stale"
    REVALIDATE = "revalidate"
    FETCH = "fetch"
    GATEWAY_TIMEOUT = "gateway-timeout"


class Forward(StrEnum):
    """Why the origin is asked: RFC 9211's ``fwd`` parameter values."""

    URI_MISS = "uri-miss"  # nothing stored for the URI
    VARY_MISS = "vary-miss"  # something stored for the URI, but no variant for these headers
    MISS = "miss"  # stored response unusable for another reason (e.g. stored for another method)
    STALE = "stale"  # stored response stale (or no-cache): validation or refetch needed
    REQUEST = "request"  # the request's directives (no-cache, max-age, min-fresh) forced it
    METHOD = "method"  # the method is not answered from the cache (unsafe methods, OPTIONS...)
    BYPASS = "bypass"  # the cache was told not to answer this request (e.g. a Range request)


@dataclass(frozen=True)
class ReuseDecision:
    """``decide``'s answer: the action, why the origin is asked (None when answered from the
    cache), and the stored response's current age and remaining freshness ``ttl`` (s, negative
    once stale; both 0 without a stored response)."""

    action: Reuse
    forward: Forward | None
    age: float = 0.0
    ttl: float = 0.0

    @property
    def from_cache(self) -> bool:
        """Whether the answer comes from the stored response without waiting on the origin."""
        return self.action in (Reuse.FRESH, Reuse.STALE)


def has_validators(stored: StoredResponse) -> bool:
    """Whether a conditional request can validate the stored response (ETag or Last-Modified)."""
    return has(stored.headers, "etag") or has(stored.headers, "last-modified")


def serve_stale_window(cc: CacheControl, policy: Policy) -> float:
    """How long (s) past its freshness a response with Cache-Control ``cc`` may be served stale
    while it is refreshed: its stale-while-revalidate plus the namespace's ``stale_ttl``; 0 when
    must-revalidate, proxy-revalidate, s-maxage or no-cache forbid serving it stale."""
    if cc.forbids_stale or cc.no_cache:
        return 0.0
    return float(cc.stale_while_revalidate or 0) + policy.stale_ttl


def error_window(
    cc: CacheControl, request_cc: CacheControl | None, policy: Policy, disconnected: bool = False
) -> float:
    """How long (s) past its freshness a response may be served when the origin fails: the larger
    of the response's and the request's stale-if-error plus the namespace's ``stale_ttl`` for an
    error status (500, 502, 503, 504); when the origin gave no answer at all (``disconnected``:
    refused, reset, timed out), RFC 9111 §4.2.4 lets a cache serve stale on its own, for up to
    ``policy.stale_if_disconnected`` more. 0 when the response forbids serving it stale
    (must-revalidate, proxy-revalidate, s-maxage, no-cache)."""
    if cc.forbids_stale or cc.no_cache:
        return 0.0
    sie = max(cc.stale_if_error or 0, (request_cc.stale_if_error or 0) if request_cc else 0)
    return float(sie) + policy.stale_ttl + (policy.stale_if_disconnected if disconnected else 0.0)


def fresh_until(stored: StoredResponse, policy: Policy) -> float:
    """The instant (engine clock, s) the stored response stops being fresh."""
    return stored.response_time + stored.lifetime(policy) - stored.initial_age


def decide(
    method: str,
    request_headers: Headers,
    stored: StoredResponse | None,
    now: float,
    policy: Policy,
    miss: Forward = Forward.URI_MISS,
) -> ReuseDecision:
    """What to do with a GET or HEAD request given the ``stored`` response its URI (and the
    URI's Vary) selected, None when there is none (``miss`` then says which kind of miss: a
    ``URI_MISS``, or a ``VARY_MISS`` when the URI has other variants). ``stored`` is checked
    against the request's Vary headers here too (a mismatch is a ``VARY_MISS``). Any other
    method: ``FETCH`` with ``Forward.METHOD``."""
    req_cc = request_cache_control(request_headers)
    if method.upper() not in ("GET", "HEAD"):
        return ReuseDecision(Reuse.FETCH, Forward.METHOD)
    if stored is not None and stored.method.upper() != "GET":
        stored, miss = None, Forward.MISS
    if stored is not None:
        fields = vary_fields(stored.headers)
        if not matches(fields, stored.selecting_headers, request_headers):
            stored, miss = None, Forward.VARY_MISS
    if stored is None:
        return ReuseDecision(Reuse.GATEWAY_TIMEOUT if req_cc.only_if_cached else Reuse.FETCH, miss)
    age = stored.age(now)
    ttl = stored.lifetime(policy) - age
    cc = stored.cache_control

    def unless_cached(action: Reuse, forward: Forward) -> ReuseDecision:
        return ReuseDecision(Reuse.GATEWAY_TIMEOUT if req_cc.only_if_cached else action, forward, age, ttl)

    validate = Reuse.REVALIDATE if has_validators(stored) else Reuse.FETCH
    if req_cc.no_cache:
        return unless_cached(validate, Forward.REQUEST)
    if cc.no_cache:
        return unless_cached(validate, Forward.STALE)
    if req_cc.max_age is not None and age > req_cc.max_age:
        return unless_cached(validate, Forward.REQUEST)
    if req_cc.min_fresh is not None and ttl < req_cc.min_fresh:
        return unless_cached(validate, Forward.REQUEST)
    if ttl > 0:
        return ReuseDecision(Reuse.FRESH, None, age, ttl)
    staleness = -ttl
    if not cc.forbids_stale:
        if req_cc.max_stale is not None and staleness <= req_cc.max_stale:
            return ReuseDecision(Reuse.STALE, None, age, ttl)
        if req_cc.max_age is None and req_cc.min_fresh is None and staleness < serve_stale_window(cc, policy):
            return ReuseDecision(Reuse.STALE, None, age, ttl)
    return unless_cached(validate, Forward.STALE)


def may_serve_on_error(
    request_headers: Headers, stored: StoredResponse, now: float, policy: Policy, disconnected: bool = False
) -> bool:
    """Whether ``stored`` may answer the request when the origin failed: with an error status
    (500, 502, 503, 504), or with no answer at all (``disconnected``). Fresh responses always;
    stale ones by no more than ``error_window``."""
    ttl = stored.lifetime(policy) - stored.age(now)
    if ttl > 0:
        return True
    window = error_window(stored.cache_control, request_cache_control(request_headers), policy, disconnected)
    return -ttl <= window
