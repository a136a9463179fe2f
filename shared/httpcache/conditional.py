"""Conditional requests (RFC 9110 §13, RFC 9111 §4.3): the client's, answered by the cache
with a 304, and the cache's own, sent to the origin to validate a stored response.
"""

from __future__ import annotations

from shared.httpcache.cachecontrol import parse_cache_control
from shared.httpcache.fields import (
    HOP_BY_HOP,
    Headers,
    get_all,
    get_first,
    parse_http_date,
    split_list,
    strip_hop_by_hop,
    without,
)
from shared.httpcache.lifetime import StoredResponse

# Client conditionals the cache evaluates itself, dropped from a request it forwards when it
# sends its own validators instead.
CONDITIONAL_FIELDS = ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range")
# Fields a 304 carries (RFC 9110 §15.4.5) from the stored response.
NOT_MODIFIED_FIELDS = ("cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified")
# Fields a 304 never updates in the stored response (RFC 9111 §3.2): Content-Length frames the
# stored body; the content codings, range and digest describe it, and its ETag names it (a 304
# carrying another tag does not turn the stored body into that representation; the HTTP cache
# test suite's 304-etag-update-response-* tests hold caches to exactly this list).
NOT_UPDATED_BY_304 = frozenset(
    {"content-length", "content-encoding", "content-range", "content-md5", "transfer-encoding", "etag"}
)


def _opaque(tag: str) -> str:
    """An entity-tag without its weakness prefix (for the weak comparison, RFC 9110 §8.8.3.2)."""
    tag = tag.strip()
    return tag[2:] if tag.startswith(("W/", "w/")) else tag


def weak_match(a: str, b: str) -> bool:
    """RFC 9110's weak comparison of two entity-tags: equal opaque tags, weakness ignored."""
    return _opaque(a) == _opaque(b)


def if_none_match_matches(if_none_match: list[str], etag: str | None) -> bool:
    """Whether an If-None-Match list (its members over all lines) matches ``etag``: ``*``
    matches any current representation, otherwise any member weakly equal to it."""
    if "*" in if_none_match:
        return True
    return etag is not None and any(weak_match(member, etag) for member in if_none_match)


def client_not_modified(request_headers: Headers, stored: StoredResponse) -> bool:
    """Whether the client's own conditional GET/HEAD is satisfied by the stored response, so
    the cache answers 304 (RFC 9111 §4.3.2). Only for a stored 200. If-None-Match decides when
    present (weak comparison with the stored ETag); else If-Modified-Since (a valid date) holds
    when the stored Last-Modified (or, without one, its Date) is not later than it."""
    if stored.status != 200:
        return False
    inm = [m for line in get_all(request_headers, "if-none-match") for m in split_list(line)]
    if get_all(request_headers, "if-none-match"):
        return if_none_match_matches(inm, get_first(stored.headers, "etag"))
    ims = parse_http_date(get_first(request_headers, "if-modified-since"))
    if ims is None:
        return False
    validator = parse_http_date(get_first(stored.headers, "last-modified"))
    if validator is None:
        validator = parse_http_date(get_first(stored.headers, "date"))
    if validator is None:
        validator = stored.response_time
    return validator <= ims


def not_modified(stored_headers: Headers) -> Headers:
    """The header list of a 304 answering a client from a stored response: the fields RFC 9110
    §15.4.5 lists (Cache-Control, Content-Location, Date, ETag, Expires, Vary, and
    Last-Modified), as stored. The caller adds Age and Cache-Status."""
    keep = set(NOT_MODIFIED_FIELDS)
    return tuple((n, v) for n, v in stored_headers if n.lower() in keep)


def revalidation_headers(request_headers: Headers, stored: StoredResponse) -> Headers:
    """The header list of the conditional request validating ``stored`` at the origin
    (RFC 9111 §4.3.1): the client's request headers (hop-by-hop removed) minus its own
    conditionals, plus If-None-Match with the stored ETag and If-Modified-Since with the
    stored Last-Modified, each when the stored response has one."""
    headers = without(strip_hop_by_hop(request_headers), CONDITIONAL_FIELDS)
    added: list[tuple[str, str]] = []
    etag = get_first(stored.headers, "etag")
    if etag is not None:
        added.append(("If-None-Match", etag))
    last_modified = get_first(stored.headers, "last-modified")
    if last_modified is not None:
        added.append(("If-Modified-Since", last_modified))
    return headers + tuple(added)


def is_not_modified_for(stored: StoredResponse, not_modified_headers: Headers) -> bool:
    """Whether a 304 from the origin, answering the conditional request built from ``stored``'s
    validators (``revalidation_headers``), freshens ``stored`` (RFC 9111 §4.3.3, §4.3.4).

    RFC 9111 picks, among several stored responses, those whose validator the 304 repeats. This
    cache validates one stored response per conditional request, the one whose validators it
    sent, so the 304 is about that one: it freshens it even when it carries another ETag (the
    stored tag is kept, ``merge_not_modified``; the HTTP cache test suite's
    ``304-etag-update-response-ETag`` requires both). The one exception: a 304 without an ETag
    whose Last-Modified is later than the stored one describes a newer representation than the
    one stored; the caller then asks the origin again without conditions."""
    if get_first(not_modified_headers, "etag") is not None:
        return True
    new_lm = parse_http_date(get_first(not_modified_headers, "last-modified"))
    stored_lm = parse_http_date(get_first(stored.headers, "last-modified"))
    return new_lm is None or stored_lm is None or new_lm <= stored_lm


def merge_not_modified(stored_headers: Headers, not_modified_headers: Headers) -> Headers:
    """The stored header list updated from a 304 (RFC 9111 §3.2, §4.3.4): every field the 304
    carries replaces the stored field of that name (all its lines), except the hop-by-hop
    fields and the ones that frame or describe the stored body (``NOT_UPDATED_BY_304``); the
    others are kept as stored, in their order, the new ones appended; the stored Age is not
    kept (it was the earlier exchange's, and would age the freshened response). The fields the
    merged Cache-Control's ``private="..."`` or ``no-cache="..."`` names are left out, as
    ``storage.stored_headers`` leaves them out of a full response: a 304's Set-Cookie is never
    stored for everyone."""
    incoming = strip_hop_by_hop(not_modified_headers)
    drop = HOP_BY_HOP | NOT_UPDATED_BY_304
    updates = [(n, v) for n, v in incoming if n.lower() not in drop]
    # Age describes one exchange: the stored one's goes, the 304's (if any) is the new response's.
    replaced = {n.lower() for n, _ in updates} | {"age"}
    kept = [(n, v) for n, v in stored_headers if n.lower() not in replaced]
    merged = tuple(kept + updates)
    cc = parse_cache_control(merged)
    return without(merged, cc.private_fields | cc.no_cache_fields)
