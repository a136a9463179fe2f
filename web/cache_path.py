"""The cache routes' paths, parsed from the raw request URI: `%2F` inside a key and a `/` between
path segments are different things, which the decoded PATH_INFO can no longer tell apart.

    /v1/cache/<namespace>/<key>            GET, HEAD (read), DELETE (purge, ?soft=1 allowed)
    /v1/cache/<namespace>/<key>/refresh    POST (admin)
    /v1/cache/<namespace>/<key>/meta       GET (admin)
    /v1/cache/<namespace>/warm             POST (admin, keys in the body)
    /v1/cache/<namespace>/batch            POST (a read of many keys, named in the body)

A key is exactly one segment: a `/` inside it is sent as `%2F`, so a literal `/` in the key part
is no route at all (404), and `x%2Frefresh` is the key "x/refresh", never the refresh route.
A query string is refused (400), except `soft` on a purge: it is never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, urlsplit

from shared.keys import InvalidKey, decode_key
from shared.namespaces import NAMESPACE_RE

PREFIX = "/v1/cache/"
# Purge is the one cache route that takes a query parameter.
SOFT_VALUES = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


class PathError(Exception):
    """The request cannot be served: HTTP status, error code and a detail naming the problem."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


NO_ROUTE_DETAIL = (
    "no such route: the paths are /v1/cache/<namespace>/<key>[/refresh|/meta] and /v1/cache/<namespace>/warm|batch, "
    "and a key holding '/' must send it as %2F"
)


class CacheAction(StrEnum):
    """What a /v1/cache/ request asks for; the words that are also path segments are those."""

    READ = "read"  # GET <namespace>/<key>
    META = "meta"  # GET <namespace>/<key>/meta
    REFRESH = "refresh"  # POST <namespace>/<key>/refresh
    PURGE = "purge"  # DELETE <namespace>/<key>[?soft=1]
    WARM = "warm"  # POST <namespace>/warm
    BATCH = "batch"  # POST <namespace>/batch


@dataclass(frozen=True)
class CachePath:
    namespace: str  # raw, not yet checked against the configured namespaces
    action: CacheAction
    key: str | None  # decoded and validated; None for warm and batch
    soft: bool = False  # purge only


def raw_request_uri(environ: dict[str, object]) -> tuple[str, str | None]:
    """(path, query or None) exactly as the client sent them, still percent-encoded.

    gunicorn (both its sync/gthread/gevent workers) passes RAW_URI; Werkzeug's server and test
    client pass RAW_URI and REQUEST_URI; mod_wsgi and uWSGI pass REQUEST_URI. A server with none
    of them leaves only the decoded PATH_INFO, in which `%2F` has become `/`: the path is then
    re-encoded segment by segment, so keys holding `/` cannot be reached there."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw:
        if not raw.startswith("/"):  # absolute form: GET http://host/v1/... HTTP/1.1
            parts = urlsplit(raw)
            raw = (parts.path or "/") + ("?" + parts.query if "?" in raw else "")
        path, sep, query = raw.partition("?")
        path = path.partition("#")[0]
        script_name = str(environ.get("SCRIPT_NAME") or "")
        if script_name and path.startswith(script_name):
            path = path[len(script_name) :]
        return path, (query if sep else None)
    path_info = str(environ.get("PATH_INFO") or "")
    query_string = str(environ.get("QUERY_STRING") or "")
    encoded = "/".join(quote(segment.encode("latin-1", "replace"), safe="") for segment in path_info.split("/"))
    return encoded, (query_string or None)


def percent_decode(segment: str) -> bytes:
    """Strict percent-decoding of one path segment to bytes: a `%` not followed by two hex
    digits is an error, not a literal `%`."""
    raw = segment.encode("latin-1", "replace")
    if _ESCAPE.search(raw):
        raise InvalidKey("the key holds a '%' that is not a %XX escape (send '%' as %25)")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25:  # "%"
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def parse_cache_path(method: str, path: str, query: str | None, namespaces: Container[str]) -> CachePath:
    """What a request to a /v1/cache/ path asks for; PathError says why it asks for nothing.
    The namespace is checked first (404), then the route's shape (404), the key (400) and the
    query string (400)."""
    if not path.startswith(PREFIX):
        raise PathError(404, "not_found", NO_ROUTE_DETAIL)
    segments = path[len(PREFIX) :].split("/")
    namespace = segments[0]
    rest = segments[1:]
    if not NAMESPACE_RE.match(namespace):
        raise PathError(404, "unknown_namespace", "no such namespace")
    if namespace not in namespaces:
        raise PathError(404, "unknown_namespace", f"no namespace named {namespace!r}")
    method = "GET" if method == "HEAD" else method
    if method == "POST" and rest in ([CacheAction.WARM], [CacheAction.BATCH]):
        action, key_segment = CacheAction(rest[0]), None
    elif method == "POST" and len(rest) == 2 and rest[1] == CacheAction.REFRESH:
        action, key_segment = CacheAction.REFRESH, rest[0]
    elif method == "GET" and len(rest) == 2 and rest[1] == CacheAction.META:
        action, key_segment = CacheAction.META, rest[0]
    elif method in ("GET", "DELETE") and len(rest) == 1:
        action, key_segment = (CacheAction.READ if method == "GET" else CacheAction.PURGE), rest[0]
    elif method in ("GET", "DELETE") and not rest:
        raise PathError(400, "invalid_key", "the path must be /v1/cache/<namespace>/<key>")
    else:
        raise PathError(404, "not_found", NO_ROUTE_DETAIL)
    key = None
    if key_segment is not None:
        try:
            key = decode_key(percent_decode(key_segment))
        except InvalidKey as exc:
            raise PathError(400, "invalid_key", str(exc)) from None
    soft = _soft(query) if action is CacheAction.PURGE else False
    if query is not None and action is not CacheAction.PURGE:
        raise PathError(
            400,
            "query_not_allowed",
            f"this route takes no query string (got '?{query[:100]}'); a key holding '?' must send it as %3F",
        )
    return CachePath(namespace, action, key, soft)


def _soft(query: str | None) -> bool:
    """The purge's one parameter: soft=1|true|yes (mark stale) or 0|false|no (delete)."""
    if query is None or query == "":
        return False
    name, sep, value = query.partition("=")
    if name != "soft" or not sep or "&" in value or value.lower() not in SOFT_VALUES:
        raise PathError(
            400,
            "query_not_allowed",
            f"a purge takes only ?soft=1 (or 0, true, false, yes, no); got '?{query[:100]}'",
        )
    return SOFT_VALUES[value.lower()]
