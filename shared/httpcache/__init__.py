"""A shared HTTP cache's decisions (RFC 9111, RFC 5861 stale-*, RFC 9211 Cache-Status), no I/O.

The proxy route and the worker's refresh (the wiring) hold the I/O; every question they ask of
HTTP caching is a plain function here, driven by property tests:

- ``fields``: header lists (``Headers``), hop-by-hop removal, HTTP dates.
- ``cachecontrol``: Cache-Control parsing, robust to bad syntax (``CacheControl``).
- ``storage``: may this response be stored (§3, §3.5)? which of its fields are kept?
- ``lifetime``: freshness lifetime (§4.2.1, §4.2.2), age (§4.2.3).
- ``reuse``: may a stored response answer this request: fresh, stale, revalidate, fetch (§4).
- ``vary``: selecting headers and the variant key (§4.1).
- ``conditional``: client conditionals → 304, the origin revalidation request, 304 merge (§4.3).
- ``invalidation``: what an unsafe method invalidates (§4.4).
- ``status``: the ``Age`` and ``Cache-Status`` fields of an answer.
- ``ranges``: a single byte range cut from a stored complete 200 (RFC 9110 §14).
- ``surrogate``: Surrogate-Control (Edge Architecture 1.0) and the Surrogate-Capability we send.

The wiring's flow, for a GET (HEAD is answered from the stored GET):

1. ``request_cache_control`` + ``vary.variant_key`` (with the stored ``vary_fields`` of the URI)
   find the candidate stored response;
2. ``reuse.decide`` says what to do with it; ``REVALIDATE`` → ``conditional.revalidation_headers``
   to the origin, then ``conditional.merge_not_modified`` on a 304 (``conditional.is_not_modified_for``);
3. an origin answer goes through ``storage.storable``, ``storage.stored_headers`` and
   ``lifetime.initial_age``/``lifetime.freshness_lifetime`` before it is written;
4. the answer to the client gets ``status.with_cache_fields`` (``Age`` and ``status.cache_status``) and, when the
   client's own conditionals match, becomes ``conditional.not_modified`` (a 304).
"""

from shared.httpcache.cachecontrol import CacheControl, parse_cache_control
from shared.httpcache.fields import Headers, header_list, strip_hop_by_hop
from shared.httpcache.lifetime import Policy, StoredResponse
from shared.httpcache.reuse import Reuse, ReuseDecision, decide

__all__ = [
    "CacheControl",
    "Headers",
    "Policy",
    "Reuse",
    "ReuseDecision",
    "StoredResponse",
    "decide",
    "header_list",
    "parse_cache_control",
    "strip_hop_by_hop",
]
