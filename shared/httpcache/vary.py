"""Vary (RFC 9111 §4.1): which request header lines select a stored response, and their key.

A stored response answers a new request only when every header its Vary names has the same
*normalised* value in both requests (absent in both also matches). Normalising follows what
the field's syntax makes equivalent: lines of one field combined (``Foo: 1`` + ``Foo: 2`` is
``Foo: 1, 2``), whitespace around list commas ignored, and for the content-negotiation fields
(``Accept*``) case and list order ignored as well.
"""

from __future__ import annotations

import re

from shared.httpcache.fields import Headers, get_all, split_list

# Fields whose list members are case-insensitive and unordered for selection purposes.
_NEGOTIATION = frozenset({"accept", "accept-charset", "accept-encoding", "accept-language"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_WS = re.compile(r"[ \t]+")


def vary_fields(response_headers: Headers) -> tuple[str, ...] | None:
    """The (lower-cased, de-duplicated, in order) field names a response's Vary lists over all
    its lines; ``()`` when it has none; None when any member is ``*`` (never reusable). Members
    that are not field names are ignored."""
    names: list[str] = []
    for line in get_all(response_headers, "vary"):
        for member in split_list(line):
            if member == "*":
                return None
            lower = member.lower()
            if _TOKEN.match(lower) and lower not in names:
                names.append(lower)
    return tuple(names)


def normalised_value(name: str, request_headers: Headers) -> str | None:
    """The value of field ``name`` of a request for Vary matching; None when absent."""
    lines = get_all(request_headers, name)
    if not lines:
        return None
    members = [_WS.sub(" ", m) for line in lines for m in split_list(line)]
    if name.lower() in _NEGOTIATION:
        members = sorted(m.lower().replace(" ", "") for m in members)
    return ", ".join(members)


def selecting_headers(request_headers: Headers, fields: tuple[str, ...]) -> Headers:
    """The request's header lines named by ``fields`` (as sent): what to store beside the
    response, to match later requests and to replay the request on a background refresh."""
    wanted = set(fields)
    return tuple((n, v) for n, v in request_headers if n.lower() in wanted)


def variant_key(request_headers: Headers, fields: tuple[str, ...]) -> str:
    """A stable string naming the variant a request selects under ``fields`` (a response's
    ``vary_fields``): equal for two requests exactly when ``matches`` would say they select
    the same stored response. ``""`` when ``fields`` is empty. Hash it before use as a key."""
    parts = []
    for name in sorted(set(fields)):
        value = normalised_value(name, request_headers)
        parts.append(f"{name}" if value is None else f"{name}:{value}")
    return "\n".join(parts)


def matches(fields: tuple[str, ...] | None, stored_request_headers: Headers, request_headers: Headers) -> bool:
    """Whether a request with ``request_headers`` selects a response stored with ``fields``
    (its Vary; None for ``*``) for a request with ``stored_request_headers``."""
    if fields is None:
        return False
    return all(normalised_value(n, stored_request_headers) == normalised_value(n, request_headers) for n in fields)
