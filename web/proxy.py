"""The proxy namespaces' HTTP side: every request under a mount, in front of Flask's routing.

``install`` registers a ``before_request`` hook that claims any request whose raw target falls
under a proxy namespace's mount (web/proxy_target.py validates it), so no route of herdless
and no Werkzeug path decoding stands between the client's bytes and the origin's:

- GET and HEAD: answered by the cache (``ProxyReadPath.proxy_get``), with the stored status and
  headers, ``Age``, ``Cache-Status`` (RFC 9211) and ``X-Cache``; a client's If-None-Match /
  If-Modified-Since that the response satisfies is answered 304, a single byte Range is cut
  from the stored response (206, or 416). HEAD is answered from the stored GET. A request
  that bypasses the cache (``bypass_reason``) is forwarded instead;
- POST, PUT, DELETE, PATCH (any unsafe method): forwarded synchronously with its body; a
  success (2xx, 3xx) then purges the stored responses of its URL and of a same-origin
  Location / Content-Location (RFC 9111 §4.4) before it is answered;
- OPTIONS and extension methods (M-SEARCH...): forwarded, the latter unsafe (they invalidate);
  TRACE and CONNECT: 405.

Forwarded answers are read whole (ORIGIN_MAX_BYTES bounds them), not streamed.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, request

from shared import metrics
from shared.answers import Refused
from shared.httpcache.conditional import client_not_modified, not_modified
from shared.httpcache.fields import Headers, get_first, header_list, strip_hop_by_hop
from shared.httpcache.invalidation import invalidation_targets, is_unsafe
from shared.httpcache.ranges import RangeOutcome, partial_headers, select_range, unsatisfiable_headers
from shared.httpcache.reuse import Forward
from shared.httpcache.status import cache_status, with_cache_fields
from shared.namespaces import Namespace
from shared.origin import OriginError
from shared.origin_adapters import BuiltOnce
from shared.protocol import AnswerOutcome
from shared.proxy_origin import ProxiedResponse, ProxyOrigin
from shared.proxy_read import ForwardInstead, ProxyAnswer, ProxyReadPath, bypass_reason
from web.http import json_error, refusal
from web.proxy_target import ProxyTarget, TargetError, check_header_sizes, mount_of, parse_target, raw_target
from web.state import web_state

log = logging.getLogger("herdless.proxy")

# Routed as rules (any other method reaches the hook too: an extension method such as M-SEARCH is
# forwarded, and invalidates like any unsafe one); TRACE and CONNECT are never proxied.
PROXIED_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})
_X_CACHE = {AnswerOutcome.HIT: "HIT", AnswerOutcome.STALE: "STALE", AnswerOutcome.MISS: "MISS"}


class ProxiedResponseOut(Response):
    """A proxied answer: no Content-Type of Flask's own when the origin sent none."""

    default_mimetype = None


_origins: BuiltOnce[ProxyOrigin] = BuiltOnce()


def _origin(ns: Namespace) -> ProxyOrigin:
    settings = web_state().settings
    return _origins.get(ns.name, lambda: ProxyOrigin(ns, settings.origin_max_bytes))


def install(app: Flask, namespaces: dict[str, Namespace]) -> None:
    """Claim every request under a proxy namespace's mount, before routing."""
    mounts = sorted(
        ((ns.proxy.mount, ns) for ns in namespaces.values() if ns.proxy is not None),
        key=lambda m: -len(m[0]),
    )
    if not mounts:
        return

    def mounted(_rest: str = "") -> Response:
        # Reached only if the hook below did not claim the request (it always does): the rules
        # exist so that the mounts are routes like any other (OpenAPI, url_for, the route tests).
        return _proxy() or json_error(404, "not_found", "no such route")

    for mount, _ns in mounts:
        app.add_url_rule(mount, "proxy_mount", mounted, methods=PROXIED_METHODS)
        app.add_url_rule(f"{mount}/<anything:_rest>", "proxy_mount", mounted, methods=PROXIED_METHODS)

    @app.before_request
    def _proxy() -> Response | None:
        raw = raw_target(request.environ)
        if raw is None:
            raw = request.full_path if request.query_string else request.path
        ns = mount_of(raw, mounts) if raw.startswith("/") else _absolute_under_mount(raw, mounts)
        if ns is None:
            return None
        started = time.perf_counter()
        try:
            return _handle(ns, raw)
        finally:
            metrics.REQUEST_DURATION.labels(ns.name).observe(time.perf_counter() - started)


def _absolute_under_mount(raw: str, mounts: list[tuple[str, Namespace]]) -> Namespace | None:
    """An absolute-form target (GET http://host/catalog/x) naming a mount: refused by
    parse_target, but only once we know it was aimed at a proxy namespace."""
    if raw.startswith("/") or "://" not in raw:
        return None
    path = "/" + raw.split("://", 1)[1].partition("/")[2]
    return mount_of(path, mounts)


def _handle(ns: Namespace, raw: str) -> Response:
    try:
        target = parse_target(raw, ns)
        headers = header_list(request.headers.items())
        check_header_sizes(headers)
    except TargetError as exc:
        return json_error(exc.status, exc.error, exc.detail)
    method = request.method.upper()
    if method in REFUSED_METHODS:
        return json_error(405, "method_not_allowed", f"{method} is not proxied")
    if method in ("GET", "HEAD"):
        reason = bypass_reason(ns, headers)
        if reason is None:
            return _cached(target, method, headers)
        return _forward(target, method, headers, reason)
    return _forward(target, method, headers, "method")


def _cached(target: ProxyTarget, method: str, headers: Headers) -> Response:
    ns = target.ns
    read_path = web_state().read_path
    assert isinstance(read_path, ProxyReadPath)
    answer = read_path.proxy_get(ns, target.target, method, headers)
    if isinstance(answer, Refused):
        metrics.REQUESTS.labels(ns.name, answer.outcome).inc()
        return refusal(answer)
    if isinstance(answer, ForwardInstead):
        return _forward(target, method, headers, "not_shared")
    return _from_answer(ns, answer, headers)


def _from_answer(ns: Namespace, answer: ProxyAnswer, request_headers: Headers) -> Response:
    envelope = answer.envelope
    stored = envelope.stored_response()
    decision = answer.decision
    if decision is not None:  # from the cache
        status_field = cache_status(hit=True, ttl=decision.ttl)
        age: float | None = decision.age
    else:
        status_field = cache_status(
            hit=False,
            forward=answer.forward or Forward.URI_MISS,
            forward_status=envelope.status,
            stored=answer.stored,
            ttl=None,
        )
        # Fetched or validated by the origin for this request: no Age of ours (RFC 9111 §5.1),
        # the origin's own as it sent it.
        age = None
    outcome = answer.outcome
    headers = with_cache_fields(envelope.headers, age, status_field)
    headers = (*headers, ("X-Cache", _X_CACHE.get(outcome, "MISS")))
    if answer.stored:
        metrics.SERVED_AGE.labels(ns.name).observe(max(0.0, stored.age(answer.now_s)))
    if envelope.status == 200 and client_not_modified(request_headers, stored):
        metrics.REQUESTS.labels(ns.name, "not_modified").inc()
        kept = with_cache_fields(not_modified(envelope.headers), age, status_field)
        return ProxiedResponseOut(b"", status=304, headers=[*kept, ("X-Cache", _X_CACHE.get(outcome, "MISS"))])
    metrics.REQUESTS.labels(ns.name, outcome).inc()
    cut, byte_range = select_range(
        request.method, request_headers, envelope.status, envelope.headers, len(envelope.body)
    )
    if cut is RangeOutcome.PARTIAL and byte_range is not None:
        partial = partial_headers(headers, byte_range)
        return ProxiedResponseOut(byte_range.slice(envelope.body), status=206, headers=list(partial))
    if cut is RangeOutcome.UNSATISFIABLE:
        refused = with_cache_fields(unsatisfiable_headers(len(envelope.body)), age, status_field)
        return ProxiedResponseOut(b"", status=416, headers=[*refused, ("X-Cache", _X_CACHE.get(outcome, "MISS"))])
    return ProxiedResponseOut(envelope.body, status=envelope.status, headers=list(headers))


def _forward(target: ProxyTarget, method: str, headers: Headers, reason: str) -> Response:
    """Send the request to the origin from here and answer with what it says; never stored.
    A successful unsafe request purges what it invalidates first."""
    ns = target.ns
    metrics.PROXY_FORWARDED.labels(ns.name, reason).inc()
    body: bytes | None = None
    if method not in ("GET", "HEAD", "OPTIONS") or request.content_length:
        limit = web_state().settings.origin_max_bytes
        # One byte over the limit: Werkzeug stops a chunked body (no Content-Length) at its
        # max_content_length without a word, and a body cut short must never be forwarded.
        request.max_content_length = limit + 1
        body = request.get_data(cache=False)
        if len(body) > limit:
            return json_error(413, "request_entity_too_large", f"the request body is longer than {limit} bytes")
    try:
        response = _origin(ns).request(method, target.target, headers, body)
    except OriginError as exc:
        log.warning("proxied %s for namespace %s failed: %s", method, ns.name, type(exc).__name__)
        return json_error(502, exc.code, "the origin did not answer in time or at all")
    if is_unsafe(method):
        _invalidate(target, method, response)
    forward = Forward.METHOD if reason == "method" else Forward.BYPASS
    status_field = cache_status(hit=False, forward=forward, forward_status=response.status)
    out = with_cache_fields(strip_hop_by_hop(response.headers), None, status_field)
    answer = ProxiedResponseOut(response.body, status=response.status, headers=[*out, ("X-Cache", "PASS")])
    length = get_first(response.headers, "content-length")
    if method == "HEAD" and length is not None:
        answer.headers["Content-Length"] = length  # the GET's length, not the empty body's
    return answer


def _invalidate(target: ProxyTarget, method: str, response: ProxiedResponse) -> None:
    ns = target.ns
    assert ns.proxy is not None
    read_path = web_state().read_path
    assert isinstance(read_path, ProxyReadPath)
    for url in invalidation_targets(method, response.status, target.upstream_url, response.headers):
        invalidated = ns.proxy.same_origin_target(url)
        if invalidated is None:
            continue
        read_path.purge_url(ns, invalidated)
        metrics.PROXY_INVALIDATIONS.labels(ns.name).inc()
