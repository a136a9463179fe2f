"""HTTP routes of the web tier: cache reads, admin refresh/purge, health and metrics. Each route
turns an HTTP request into an engine call (shared/engine.py) and the engine's answer into HTTP."""

from __future__ import annotations

import hmac
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, request

from shared import metrics
from shared.engine import BrokerUnavailable, Refused, Served, WarmIncomplete, cache_headers
from shared.keys import MAX_KEY_BYTES, InvalidKey, decode_key, validate_key
from shared.namespaces import NAMESPACE_RE, Namespace
from web.http import json_error, json_response
from web.state import web_state

bp = Blueprint("herdless", __name__)

PREFIX = b"/v1/cache/"


class BadRequest(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class Target:
    ns: Namespace
    key: str


def _target(suffix: bytes = b"") -> Target:
    """Namespace and key from the raw request path (decoded bytes, strict UTF-8)."""
    raw = request.environ.get("PATH_INFO", "").encode("latin-1", "replace")
    if not raw.startswith(PREFIX):
        raise BadRequest(404, "not_found", "no such route")
    rest = raw[len(PREFIX) :]
    if suffix:
        if not rest.endswith(suffix):
            raise BadRequest(404, "not_found", "no such route")
        rest = rest[: -len(suffix)]
    ns_raw, sep, key_raw = rest.partition(b"/")
    ns_name = ns_raw.decode("ascii", "replace")
    if not sep or not NAMESPACE_RE.match(ns_name):
        if not sep:
            raise BadRequest(400, "invalid_key", "the path must be /v1/cache/<namespace>/<key>")
        raise BadRequest(404, "unknown_namespace", "no such namespace")
    ns = web_state().namespaces.get(ns_name)
    if ns is None:
        raise BadRequest(404, "unknown_namespace", f"no namespace named {ns_name!r}")
    try:
        key = decode_key(key_raw)
    except InvalidKey as exc:
        raise BadRequest(400, "invalid_key", str(exc)) from None
    return Target(ns, key)


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest) -> Response:
    return json_error(exc.status, exc.error, exc.detail)


def _require_admin() -> None:
    settings = web_state().settings
    if not settings.admin_token:
        raise BadRequest(403, "admin_disabled", "the admin API is disabled: ADMIN_TOKEN is not set")
    header = request.headers.get("Authorization", "")
    scheme, _, supplied = header.partition(" ")
    if scheme.lower() != "bearer" or not supplied:
        raise BadRequest(401, "unauthorized", "send Authorization: Bearer <ADMIN_TOKEN>")
    if not hmac.compare_digest(supplied.strip().encode(), settings.admin_token.encode()):
        raise BadRequest(403, "forbidden", "the admin token is not valid")


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison: W/"x" matches "x"; * matches any stored value."""
    if not if_none_match:
        return False
    tokens = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tokens or etag in tokens


def _serve(ns: Namespace, answer: Served) -> Response:
    """Answer from a stored entry (positive or negative) and record the outcome."""
    r = answer.result
    # A cached 404 is NEGATIVE once stored; the read that waited for the origin to say 404 is a MISS.
    negative_hit = r.negative and answer.outcome != "miss"
    headers = cache_headers(ns, r, "NEGATIVE" if negative_hit else answer.outcome, answer.now_ms)
    if answer.uncacheable:
        # The origin forbade storing it (no-store, private): neither do the client's caches.
        headers["Cache-Control"] = "no-store"
    if r.at_ms is not None:
        metrics.SERVED_AGE.labels(ns.name).observe(max(0, answer.now_ms - r.at_ms) / 1000)
    if r.negative:
        metrics.REQUESTS.labels(ns.name, "negative" if negative_hit else "miss").inc()
        return json_error(404, "not_found", "the origin has no value for this key", headers)
    if r.etag and _etag_matches(request.headers.get("If-None-Match"), r.etag):
        metrics.REQUESTS.labels(ns.name, "not_modified").inc()
        return Response(status=304, headers=headers)
    metrics.REQUESTS.labels(ns.name, answer.outcome).inc()
    return Response(r.value or b"", status=200, headers=headers, content_type=r.content_type)


def _refused(ns: Namespace, answer: Refused) -> Response:
    metrics.REQUESTS.labels(ns.name, answer.outcome).inc()
    headers = None
    if answer.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, math.ceil(answer.retry_after_s)))}
    return json_error(answer.status, answer.error, answer.detail, headers)


@bp.get("/v1/cache/<anything:_rest>")
def read(_rest: str) -> Response:
    target = _target()
    started = time.perf_counter()
    try:
        answer = web_state().engine.read(target.ns, target.key)
        if isinstance(answer, Served):
            return _serve(target.ns, answer)
        return _refused(target.ns, answer)
    finally:
        metrics.REQUEST_DURATION.labels(target.ns.name).observe(time.perf_counter() - started)


@bp.post("/v1/cache/<anything:_rest>")
def refresh(_rest: str) -> Response:
    warm_ns = _warm_namespace()
    if warm_ns is not None:
        return warm(warm_ns)
    target = _target(b"/refresh")
    _require_admin()
    try:
        enqueued = web_state().engine.request_refresh(target.ns, target.key)
    except BrokerUnavailable:
        return json_error(503, "broker_unavailable", "could not enqueue the refresh", {"Retry-After": "1"})
    if not enqueued:
        return json_response(202, {"enqueued": False, "reason": "a refresh is already running or cooling down"})
    return json_response(202, {"enqueued": True})


WARM_SUFFIX = b"/warm"
# Bytes one key may take in a JSON body: 512 bytes of UTF-8 escaped as \uXXXX (6 bytes per byte at
# worst), its quotes, a comma and some whitespace.
_JSON_BYTES_PER_KEY = 6 * MAX_KEY_BYTES + 16


def _warm_namespace() -> Namespace | None:
    """The namespace of POST /v1/cache/<namespace>/warm, or None for any other POST path. (A key
    named "warm" is refreshed at /v1/cache/<namespace>/warm/refresh, so the two never meet.)"""
    raw = request.environ.get("PATH_INFO", "").encode("latin-1", "replace")
    if not raw.startswith(PREFIX) or not raw.endswith(WARM_SUFFIX):
        return None
    ns_name = raw[len(PREFIX) : -len(WARM_SUFFIX)].decode("ascii", "replace")
    if "/" in ns_name:
        return None
    if not NAMESPACE_RE.match(ns_name):
        raise BadRequest(404, "unknown_namespace", "no such namespace")
    ns = web_state().namespaces.get(ns_name)
    if ns is None:
        raise BadRequest(404, "unknown_namespace", f"no namespace named {ns_name!r}")
    return ns


def _warm_keys(max_keys: int) -> list[str]:
    """The keys of a warm-up body {"keys": [...]}, every one validated: any fault is a 400 and
    nothing is enqueued."""
    # A body no valid request could reach is refused before it is read (413).
    request.max_content_length = max_keys * _JSON_BYTES_PER_KEY + 65536
    try:
        body = json.loads(request.get_data(cache=False))
    except ValueError:  # bad JSON or bad UTF-8
        raise BadRequest(400, "invalid_body", 'the body must be JSON: {"keys": ["key", ...]}') from None
    if not isinstance(body, dict) or "keys" not in body:
        raise BadRequest(400, "invalid_body", 'the body must be a JSON object {"keys": ["key", ...]}')
    unknown = sorted(set(body) - {"keys"})
    if unknown:
        raise BadRequest(400, "invalid_body", f'unknown field(s) {unknown}; the body is {{"keys": [...]}}')
    keys = body["keys"]
    if not isinstance(keys, list):
        raise BadRequest(400, "invalid_body", '"keys" must be a list of strings')
    if len(keys) > max_keys:
        raise BadRequest(400, "too_many_keys", f"{len(keys)} keys; at most {max_keys} (WARM_MAX_KEYS) per warm-up")
    for i, key in enumerate(keys):
        if not isinstance(key, str):
            raise BadRequest(400, "invalid_key", f"keys[{i}] is not a string")
        try:
            validate_key(key)
        except InvalidKey as exc:
            raise BadRequest(400, "invalid_key", f"keys[{i}]: {exc}") from None
    return keys


def warm(ns: Namespace) -> Response:
    """POST /v1/cache/<namespace>/warm (admin): enqueue a refresh of every listed key that is not
    fresh and not already being refreshed."""
    _require_admin()
    state = web_state()
    keys = _warm_keys(state.settings.warm_max_keys)
    try:
        result = state.engine.warm(ns, keys)
    except WarmIncomplete as exc:
        return json_error(503, "broker_unavailable", str(exc), {"Retry-After": "1"})
    return json_response(
        202,
        {
            "enqueued": result.enqueued,
            "already_fresh": result.already_fresh,
            "in_flight": result.in_flight,
            "cooling_down": result.cooling_down,
        },
    )


@bp.delete("/v1/cache/<anything:_rest>")
def purge(_rest: str) -> Response:
    target = _target()
    _require_admin()
    soft = request.args.get("soft") in ("1", "true", "yes")
    web_state().engine.purge(target.ns, target.key, soft=soft)
    return Response(status=204)


@bp.get("/v1/namespaces")
def namespaces() -> Response:
    """The configured namespaces: strategy, lifetimes, the origin's host (or callable) and the
    names of the headers sent to it. Never a header's value, nor the origin URL, which may
    carry a credential of its own."""
    return json_response(
        200,
        {
            "namespaces": [
                {
                    "name": ns.name,
                    "strategy": ns.strategy,
                    "origin": ns.origin_name,
                    "origin_headers": ns.origin_headers.names,
                    "cache_ttl_seconds": ns.cache_ttl_seconds,
                    "stale_ttl_seconds": ns.stale_ttl_seconds,
                    "stale_if_error_seconds": ns.stale_if_error_seconds,
                    "negative_ttl_seconds": ns.negative_ttl_seconds,
                    "xfetch_beta": ns.xfetch_beta,
                    "origin_timeout_seconds": ns.origin_timeout_seconds,
                    "origin_max_concurrency": ns.origin_max_concurrency,
                }
                for ns in sorted(web_state().namespaces.values(), key=lambda ns: ns.name)
            ]
        },
    )


@bp.get("/healthz")
def healthz() -> Response:
    return json_response(200, {"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    state = web_state()
    checks: dict[str, str] = {}
    try:
        state.store.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"unreachable ({type(exc).__name__})"
    try:
        with state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=1)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"unreachable ({type(exc).__name__})"
    ok = all(v == "ok" for v in checks.values())
    body: dict[str, Any] = {"status": "ready" if ok else "unavailable", "checks": checks}
    if not ok:
        body["error"] = "not_ready"
        body["detail"] = "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
    return json_response(200 if ok else 503, body)


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(web_state().metrics_registry), content_type=CONTENT_TYPE_LATEST)
