"""What an unsafe request invalidates (RFC 9111 §4.4).

A non-error answer (2xx or 3xx) to a request with an unsafe method (anything but GET, HEAD,
OPTIONS, TRACE) invalidates the stored responses for the request's URI and for the URIs its
``Location`` and ``Content-Location`` name, when those are on the same origin (scheme, host
and port) as the request: another origin's URIs are never touched (§4.4: avoids denial of
service).
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from shared.httpcache.fields import Headers, get_first

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def is_unsafe(method: str) -> bool:
    """Whether ``method`` is unsafe (RFC 9110 §9.2.1): any method but GET, HEAD, OPTIONS, TRACE,
    including extension methods (``M-SEARCH``...)."""
    return method.upper() not in SAFE_METHODS


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), port


def invalidation_targets(method: str, status: int, request_url: str, response_headers: Headers) -> list[str]:
    """The absolute URLs whose stored responses to invalidate after an answer ``status`` with
    ``response_headers`` to a ``method`` request for ``request_url`` (absolute, as the client
    addressed the cache: scheme://host[:port]/path?query). Empty for a safe method or an error
    status (1xx, 4xx, 5xx). Location and Content-Location are resolved against
    ``request_url``; those on another origin (or unparseable) are left out. The request URL
    comes first; no duplicates; fragments removed."""
    if not is_unsafe(method) or not 200 <= status < 400:
        return []
    targets = [request_url.split("#", 1)[0]]
    base = _origin(request_url)
    for name in ("location", "content-location"):
        value = get_first(response_headers, name)
        if not value or not value.strip():
            continue
        try:
            resolved = urljoin(request_url, value.strip()).split("#", 1)[0]
        except ValueError:
            continue
        if _origin(resolved) == base and resolved not in targets:
            targets.append(resolved)
    return targets
