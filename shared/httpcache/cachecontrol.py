"""Cache-Control (RFC 9111 §5.2) parsed once into a ``CacheControl``, for a request or a response.

Robust to what origins and clients really send:

- every field line of Cache-Control is read (a list split over lines is one list);
- directive names are case-insensitive; arguments may be a token or a quoted string (escapes
  undone); commas inside a quoted string do not split (``ext="max-age=3600"`` is one unknown
  directive, not a max-age);
- a directive repeated keeps its first occurrence (RFC 9111 §4.2.1);
- delta-seconds (``max-age``, ``s-maxage``...) are decimal digits, leading zeros allowed, a
  quoted argument of digits accepted; a value beyond 2^31 is 2^31 (§1.2.2);
- a ``max-age``/``s-maxage`` with an invalid argument (``max-age='3600'``, ``max-age=1.5``,
  ``max-age=-1``, no argument) makes the response stale (0 s, as §4.2.1 encourages); other
  directives with an invalid argument are ignored, except request ``max-stale`` with no
  argument, which means "any staleness";
- an element that is not ``token [ "=" ( token / quoted-string ) ]`` is skipped, except that a
  malformed element naming ``max-age`` or ``s-maxage`` still makes the response stale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shared.httpcache.fields import Headers, get_all, split_list

# RFC 9111 §1.2.2: a delta-seconds too large to represent is 2^31.
DELTA_CAP = 2**31
# Request ``max-stale`` without an argument: any staleness is acceptable.
ANY_STALENESS = DELTA_CAP

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_ELEMENT = re.compile(rf'^({_TOKEN})(?:=(?:({_TOKEN})|"((?:[^"\\]|\\.)*)"))?$')
_NAME_ONLY = re.compile(rf"^\s*({_TOKEN})")
_DIGITS = re.compile(r"^[0-9]+$")
_UNESCAPE = re.compile(r"\\(.)")
_FIELD_NAME = re.compile(rf"^{_TOKEN}$")


@dataclass(frozen=True)
class CacheControl:
    """The directives of one message's Cache-Control, already interpreted.

    ``directives`` holds every well-formed element in order (lower-cased name, unquoted argument
    or None); the attributes are the ones a cache acts on, from the first occurrence of each.
    Delta-seconds attributes are None when the directive is absent (or ignored as invalid)."""

    directives: tuple[tuple[str, str | None], ...] = ()
    max_age: int | None = None
    s_maxage: int | None = None
    no_store: bool = False
    no_cache: bool = False  # unqualified: revalidate before every reuse
    no_cache_fields: frozenset[str] = field(default_factory=frozenset)  # no-cache="a, b" (lower-cased)
    private: bool = False  # unqualified: a shared cache must not store the response
    private_fields: frozenset[str] = field(default_factory=frozenset)  # private="a, b" (lower-cased)
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    no_transform: bool = False
    immutable: bool = False
    stale_while_revalidate: int | None = None  # RFC 5861
    stale_if_error: int | None = None  # RFC 5861, request or response
    max_stale: int | None = None  # request; ANY_STALENESS when given without an argument
    min_fresh: int | None = None  # request
    only_if_cached: bool = False  # request

    def has(self, name: str) -> bool:
        """Whether the directive ``name`` (case-insensitive) is present, well-formed or not."""
        lower = name.lower()
        return any(n == lower for n, _ in self.directives)

    @property
    def forbids_stale(self) -> bool:
        """must-revalidate, proxy-revalidate or s-maxage (§5.2.2.2, §5.2.2.8, §5.2.2.10): once
        stale, a shared cache may not serve the response without validating it first, whatever
        the request, stale-while-revalidate, stale-if-error or the namespace allow."""
        return self.must_revalidate or self.proxy_revalidate or self.s_maxage is not None


def _delta(arg: str | None) -> int | None:
    """A delta-seconds argument (digits only), capped at 2^31; None when invalid or missing."""
    if arg is None or not _DIGITS.match(arg):
        return None
    return min(int(arg), DELTA_CAP)


def _field_names(arg: str | None) -> frozenset[str]:
    return frozenset(n.lower() for n in split_list(arg or "") if _FIELD_NAME.match(n))


def parse_cache_control(headers: Headers) -> CacheControl:
    """The Cache-Control of a message (all its field lines), interpreted as the module says."""
    seen: dict[str, str | None] = {}
    order: list[tuple[str, str | None]] = []
    stale_now = False  # a malformed max-age / s-maxage: the response is stale
    for line in get_all(headers, "cache-control"):
        for element in split_list(line):
            m = _ELEMENT.match(element)
            if not m:
                named = _NAME_ONLY.match(element)
                if named and named.group(1).lower() in ("max-age", "s-maxage"):
                    stale_now = True
                continue
            name = m.group(1).lower()
            arg = m.group(2) if m.group(2) is not None else m.group(3)
            if m.group(3) is not None:
                arg = _UNESCAPE.sub(r"\1", m.group(3))
            order.append((name, arg))
            seen.setdefault(name, arg)

    def present(name: str) -> bool:
        return name in seen

    def age_directive(name: str) -> int | None:
        if not present(name):
            return 0 if stale_now and name == "max-age" else None
        value = _delta(seen[name])
        return 0 if value is None else value

    no_cache_arg = seen.get("no-cache")
    private_arg = seen.get("private")
    max_stale: int | None = None
    if present("max-stale"):
        max_stale = ANY_STALENESS if seen["max-stale"] is None else _delta(seen["max-stale"])
    return CacheControl(
        directives=tuple(order),
        max_age=age_directive("max-age"),
        s_maxage=age_directive("s-maxage"),
        no_store=present("no-store"),
        no_cache=present("no-cache") and not _field_names(no_cache_arg),
        no_cache_fields=_field_names(no_cache_arg) if present("no-cache") else frozenset(),
        private=present("private") and not _field_names(private_arg),
        private_fields=_field_names(private_arg) if present("private") else frozenset(),
        public=present("public"),
        must_revalidate=present("must-revalidate"),
        proxy_revalidate=present("proxy-revalidate"),
        must_understand=present("must-understand"),
        no_transform=present("no-transform"),
        immutable=present("immutable"),
        stale_while_revalidate=_delta(seen.get("stale-while-revalidate")),
        stale_if_error=_delta(seen.get("stale-if-error")),
        max_stale=max_stale,
        min_fresh=_delta(seen.get("min-fresh")),
        only_if_cached=present("only-if-cached"),
    )


def request_cache_control(headers: Headers) -> CacheControl:
    """A request's Cache-Control, with ``Pragma: no-cache`` read as ``no-cache`` when the request
    carries no Cache-Control at all (RFC 9111 §5.4)."""
    cc = parse_cache_control(headers)
    if not get_all(headers, "cache-control"):
        pragma = [e.lower() for line in get_all(headers, "pragma") for e in split_list(line)]
        if "no-cache" in pragma:
            return CacheControl(directives=(("no-cache", None),), no_cache=True)
    return cc
