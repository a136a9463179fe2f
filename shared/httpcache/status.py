"""The fields a cache adds to every answer: ``Age`` (RFC 9111 §5.1) and ``Cache-Status``
(RFC 9211), for the answer's header list.
"""

from __future__ import annotations

import math

from shared.httpcache.cachecontrol import DELTA_CAP
from shared.httpcache.fields import Headers, replaced, without
from shared.httpcache.reuse import Forward

CACHE_NAME = "herdless"


def age_field(age: float) -> str:
    """The Age field value for a current age (s): whole seconds, rounded down, never negative,
    at most 2^31."""
    if math.isnan(age) or age < 0:
        return "0"
    return str(min(int(age), DELTA_CAP))


def cache_status(
    *,
    hit: bool,
    forward: Forward | None = None,
    forward_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    ttl: float | None = None,
    detail: str | None = None,
) -> str:
    """One Cache-Status member naming this cache (RFC 9211 §2): ``herdless; hit`` for an answer
    from the cache, ``herdless; fwd=<reason>`` when the origin was asked, with ``fwd-status``,
    ``stored`` (the origin's answer was stored), ``collapsed`` (the request waited on another's
    origin call), ``ttl`` (remaining freshness, whole seconds, negative when stale) and
    ``detail`` (a token) as they apply."""
    params = [CACHE_NAME]
    if hit:
        params.append("hit")
    elif forward is not None:
        params.append(f"fwd={forward.value}")
        if forward_status is not None:
            params.append(f"fwd-status={forward_status}")
        if stored:
            params.append("stored")
        if collapsed:
            params.append("collapsed")
    if ttl is not None and not math.isnan(ttl):
        params.append(f"ttl={math.floor(ttl) if ttl >= 0 else -math.ceil(-ttl)}")
    if detail:
        params.append(f"detail={detail}")
    return "; ".join(params)


def with_cache_fields(headers: Headers, age: float | None, status: str) -> Headers:
    """``headers`` with ``Age`` set to ``age_field(age)`` (left as it is when ``age`` is None:
    an answer straight from the origin keeps the origin's own Age) and ``status`` appended to
    any Cache-Status a cache before us added (RFC 9211: the member nearest the origin comes
    first, so ours, the last hop before the client, goes last), as one field line; without
    Surrogate-Control, which is addressed to this cache, not to the client."""
    out = without(headers, ("surrogate-control",))
    out = out if age is None else replaced(out, "Age", age_field(age))
    previous = [v for n, v in out if n.lower() == "cache-status"]
    value = ", ".join([*previous, status]) if previous else status
    return replaced(out, "Cache-Status", value)
