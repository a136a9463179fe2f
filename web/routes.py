"""HTTP routes of the web tier: cache reads, admin refresh/purge/warm-up/meta and namespaces,
health and metrics. Each route turns an HTTP request into a read path call (shared/readpath.py) and
its answer into HTTP. Cache paths are parsed from the raw request URI (web/cache_path.py):
Flask's routing sees the decoded path, in which %2F and / are the same, so one rule per method
takes any /v1/cache/ path and the parser decides which action, if any, it names."""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, request
from redis.exceptions import RedisError

from shared import metrics, rates
from shared.answers import (
    NOT_ENQUEUED,
    QUEUE_FULL,
    BrokerUnavailable,
    QueueRefused,
    Refused,
    Served,
    Unstored,
    WarmIncomplete,
)
from shared.batchread import read_batch
from shared.keys import MAX_KEY_BYTES, InvalidKey, validate_key
from shared.namespaces import Namespace
from shared.nearcache import hit_until_ms
from shared.protocol import AnswerOutcome, Freshness, LeaseState, Refusal
from shared.store import EntryState
from shared.tasks import send_refreshes
from web.batch import batch_body
from web.cache_path import CacheAction, CachePath, PathError, parse_cache_path, raw_request_uri
from web.http import cache_headers, json_error, json_response, refusal
from web.state import ADMITTED, ANSWERED, web_state

bp = Blueprint("herdless", __name__)


class BadRequest(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class Target:
    ns: Namespace
    key: str


def _asks_for_meta() -> bool:
    """Is this GET the admin's /v1/cache/<namespace>/<key>/meta? Told from the raw path's shape
    alone, before the namespace is looked up (the read path costs a split, not a parse)."""
    path, _ = raw_request_uri(request.environ)
    segments = path.split("/")
    return len(segments) == 6 and segments[5] == CacheAction.META


def _asks_for_batch() -> bool:
    """Is this POST the public /v1/cache/<namespace>/batch? Told from the raw path's shape alone,
    before the admin token is checked (every other POST to a cache path is an admin's)."""
    path, _ = raw_request_uri(request.environ)
    segments = path.split("/")
    return len(segments) == 5 and segments[4] == CacheAction.BATCH


def _cache_path() -> tuple[Namespace, CachePath]:
    """The namespace and what a /v1/cache/ request asks for, from the raw request URI."""
    namespaces = web_state().namespaces
    path, query = raw_request_uri(request.environ)
    try:
        parsed = parse_cache_path(request.method, path, query, namespaces)
    except PathError as exc:
        raise BadRequest(exc.status, exc.error, exc.detail) from None
    ns = namespaces[parsed.namespace]
    if ns.proxy is not None:  # its keys are proxied URLs: read at its mount, managed under /v1/proxy/
        raise BadRequest(404, "proxy_namespace", f"namespace {ns.name!r} is a proxy: read it at {ns.proxy.mount}/...")
    return ns, parsed


def _target(parsed: tuple[Namespace, CachePath]) -> Target:
    ns, path = parsed
    assert path.key is not None  # every action but warm names a key
    return Target(ns, path.key)


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


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison: W/"x" matches "x"; * matches any stored value."""
    if not if_none_match:
        return False
    tokens = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tokens or etag in tokens


def _serve(ns: Namespace, answer: Served) -> Response:
    """Answer from a stored entry (positive or negative) and record the outcome."""
    r = answer.result
    # A cached 404 is NEGATIVE once stored; the read that waited for the origin to say 404 is a MISS.
    negative_hit = r.negative and answer.outcome != AnswerOutcome.MISS
    headers = cache_headers(ns, r, "NEGATIVE" if negative_hit else answer.outcome, answer.now_ms)
    if r.at_ms is not None:
        metrics.SERVED_AGE.labels(ns.name).observe(max(0, answer.now_ms - r.at_ms) / 1000)
    if r.negative:
        metrics.REQUESTS.labels(ns.name, "negative" if negative_hit else "miss").inc()
        return json_error(404, "not_found", "the origin has no value for this key", headers)
    if r.etag and etag_matches(request.headers.get("If-None-Match"), r.etag):
        metrics.REQUESTS.labels(ns.name, "not_modified").inc()
        return Response(status=304, headers=headers)
    metrics.REQUESTS.labels(ns.name, answer.outcome).inc()
    return Response(r.value or b"", status=200, headers=headers, content_type=r.content_type)


def _serve_unstored(ns: Namespace, answer: Unstored) -> Response:
    """Answer with a value the origin forbade storing (no-store, private): neither do the client's caches."""
    metrics.REQUESTS.labels(ns.name, answer.outcome).inc()
    headers = {"X-Cache": answer.outcome.upper(), "Cache-Control": "no-store"}
    return Response(answer.body, status=200, headers=headers, content_type=answer.content_type)


def _refused(ns: Namespace, answer: Refused) -> Response:
    metrics.REQUESTS.labels(ns.name, answer.outcome).inc()
    return refusal(answer)


# Admin routes check the token before the namespace: without it, a 404 unknown_namespace
# against a 401 would tell anyone which namespaces exist.
@bp.get("/v1/cache/<anything:_rest>")
def read(_rest: str) -> Response:
    if _asks_for_meta():
        _require_admin()
    parsed = _cache_path()
    if parsed[1].action is CacheAction.META:
        return meta(_target(parsed))
    target = _target(parsed)
    started = time.perf_counter()
    rates.RECORDER.note_key(target.ns.name, target.key)  # for the status page's ideal origin calls
    try:
        # The front door (web/front.py) may hold the read's admission slot already.
        answer = request.environ.pop(ANSWERED, None)  # a wait the front door joined (web/front.py)
        if answer is None:
            answer = web_state().read_path.read(target.ns, target.key, admitted=bool(request.environ.get(ADMITTED)))
        if isinstance(answer, Served):
            return _serve(target.ns, answer)
        if isinstance(answer, Unstored):
            return _serve_unstored(target.ns, answer)
        return _refused(target.ns, answer)
    finally:
        metrics.REQUEST_DURATION.labels(target.ns.name).observe(time.perf_counter() - started)


@bp.post("/v1/cache/<anything:_rest>")
def refresh(_rest: str) -> Response:
    if _asks_for_batch():  # public, like a read
        return batch_read(_cache_path()[0])
    _require_admin()  # every other POST to a cache path is an admin's
    parsed = _cache_path()
    if parsed[1].action is CacheAction.WARM:
        return warm(parsed[0])
    target = _target(parsed)
    try:
        enqueued = web_state().read_path.request_refresh(target.ns, target.key)
    except QueueRefused:
        return refusal(QUEUE_FULL)
    except BrokerUnavailable:
        return refusal(NOT_ENQUEUED)
    if not enqueued:
        return json_response(202, {"enqueued": False, "reason": "a refresh is already running or cooling down"})
    return json_response(202, {"enqueued": True})


# Bytes one key may take in a JSON body: 512 bytes of UTF-8 escaped as \uXXXX (6 bytes per byte at
# worst), its quotes, a comma and some whitespace.
_JSON_BYTES_PER_KEY = 6 * MAX_KEY_BYTES + 16


def _body_keys(max_keys: int, setting: str = "WARM_MAX_KEYS", what: str = "warm-up") -> list[str]:
    """The keys of a warm-up's or batch read's body {"keys": [...]}, every one validated: any
    fault is a 400, and nothing is read or enqueued."""
    # A body no valid request could reach is refused before it is read (413).
    request.max_content_length = max_keys * _JSON_BYTES_PER_KEY + 65536
    try:
        body = json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nested past the parser's recursion
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
        raise BadRequest(400, "too_many_keys", f"{len(keys)} keys; at most {max_keys} ({setting}) per {what}")
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
    fresh and not already being refreshed. The caller checked the token."""
    state = web_state()
    keys = _body_keys(state.settings.warm_max_keys)
    try:
        result = state.read_path.warm(ns, keys)
    except WarmIncomplete as exc:
        return json_error(503, Refusal.BROKER_UNAVAILABLE, str(exc), {"Retry-After": "1"})
    return json_response(
        202,
        {
            "enqueued": result.enqueued,
            "already_fresh": result.already_fresh,
            "in_flight": result.in_flight,
            "cooling_down": result.cooling_down,
            "queue_full": result.queue_full,
        },
    )


def batch_read(ns: Namespace) -> Response:
    """POST /v1/cache/<namespace>/batch: answer every listed key as a single read would, in one
    JSON object keyed by key (web/batch.py; shared/batchread.py tells how)."""
    state = web_state()
    settings = state.settings
    keys = _body_keys(settings.batch_max_keys, "BATCH_MAX_KEYS", "batch read")
    started = time.perf_counter()
    try:
        answers = read_batch(
            state.read_path, ns, keys, lambda requests: send_refreshes(state.celery, requests, settings)
        )
        return json_response(200, batch_body(ns, answers))
    finally:
        metrics.REQUEST_DURATION.labels(ns.name).observe(time.perf_counter() - started)


@bp.delete("/v1/cache/<anything:_rest>")
def purge(_rest: str) -> Response:
    _require_admin()
    parsed = _cache_path()
    target = _target(parsed)
    web_state().read_path.purge(target.ns, target.key, soft=parsed[1].soft)
    return Response(status=204)


def meta(target: Target) -> Response:
    """GET /v1/cache/<namespace>/<key>/meta (admin): what Redis holds for the key, read in one
    round trip that changes nothing (not even the lease). The caller checked the token."""
    state = web_state().store.inspect(target.ns, target.key)
    if not state.anything_stored:
        return json_error(404, "not_stored", "nothing is stored for this key: no value, lease or queued refresh")
    return json_response(200, {"namespace": target.ns.name, "key": target.key, **entry_state_json(target.ns, state)})


def _seconds_until(now_ms: int, until_ms: int | None) -> float | None:
    return None if until_ms is None else round((until_ms - now_ms) / 1000, 3)


def entry_state_json(ns: Namespace, s: EntryState) -> dict[str, Any]:
    value: dict[str, Any] | None = None
    if s.stored and s.soft_ms is not None:
        value = {
            "state": "fresh" if s.now_ms < s.soft_ms else "stale",
            "negative": s.negative,
            "fresh_until_ms": s.soft_ms,
            "fresh_for_seconds": _seconds_until(s.now_ms, s.soft_ms),
            # From this moment a read is EARLY (XFetch), not HIT; equal to fresh_until without XFetch.
            "early_refresh_from_ms": int(hit_until_ms(s.soft_ms, s.delta_ms, ns.beta, s.u, s.ttl_ms)),
            "age_seconds": None if s.at_ms is None else round(max(0, s.now_ms - s.at_ms) / 1000, 3),
            "refresh_duration_ms": s.delta_ms,
            "refresh_duration_mean_ms": s.duration_mean_ms,
            "refresh_duration_spread_ms": s.duration_spread_ms,
            "size_bytes": s.size_bytes,
            "etag": s.etag or None,
            "kept_until_ms": s.kept_until_ms,
            "soft_purged_at_ms": s.soft_purged_at_ms,
        }
    return {
        "now_ms": s.now_ms,
        "value": value,
        "lease": {
            "held": s.lease == LeaseState.HELD,
            "until_ms": s.lease_until_ms if s.lease == LeaseState.HELD else None,
            "seconds_left": _seconds_until(s.now_ms, s.lease_until_ms) if s.lease == LeaseState.HELD else None,
        },
        "cooldown": {
            "held": s.lease == LeaseState.COOLDOWN,
            "until_ms": s.lease_until_ms if s.lease == LeaseState.COOLDOWN else None,
            "seconds_left": _seconds_until(s.now_ms, s.lease_until_ms) if s.lease == LeaseState.COOLDOWN else None,
            # The failure's error code, as a cold read answers it (502); null unless held.
            "reason": s.cooldown_reason or None,
            # Each consecutive failure doubles the cooldown's length.
            "consecutive_failures": s.failures,
        },
        "refresh": {
            "state": s.queued or "none",
            "marker_until_ms": s.queued_until_ms,
        },
    }


@bp.get("/v1/namespaces")
def namespaces() -> Response:
    """(admin) The configured namespaces and their effective settings: strategy, lifetimes, β,
    timeouts, concurrency, the origin's host (or callable) and the names of the headers sent to
    it. Never a header's value, nor the origin URL, which may carry a credential of its own."""
    _require_admin()
    settings = web_state().settings
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
                    # What the engine uses: β is 0 unless the strategy is xfetch, and only xfetch
                    # and swr serve a value past its fresh lifetime.
                    "effective_xfetch_beta": ns.beta,
                    "serves_stale": ns.serves_stale,
                    "freshness": ns.freshness,
                    "fallback": ns.fallback,
                    # The batch origin's host:port only, as for the origin: its URL may hold a credential.
                    "batch_origin": (
                        None
                        if ns.batch is None
                        else {"host": ns.batch.host, "max_keys": ns.batch.max_keys, "window_ms": ns.batch.window_ms}
                    ),
                    "origin_freshness_bounds": (
                        {
                            "min_ttl_seconds": ns.min_ttl_seconds,
                            "max_ttl_seconds": ns.max_ttl_seconds,
                            "min_stale_seconds": ns.min_stale_seconds,
                            "max_stale_seconds": ns.max_stale_seconds,
                            "min_stale_if_error_seconds": ns.min_stale_if_error_seconds,
                            "max_stale_if_error_seconds": ns.max_stale_if_error_seconds,
                        }
                        if ns.freshness is Freshness.ORIGIN
                        else None
                    ),
                    "lease_ttl_seconds": settings.lease_ttl_seconds,
                    "cold_wait_timeout_seconds": settings.cold_wait_timeout_seconds,
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
    """200 ready; 200 degraded while Redis is unreachable but this process holds values it can
    answer from memory (a load balancer should keep sending it traffic: taking it out turns
    every one of those answers into an error); 503 otherwise."""
    state = web_state()
    checks: dict[str, str] = {}
    health = state.read_path.health
    down_for = health.down_for()
    if down_for is not None:  # known down: do not wait on a connect, the probe watches it
        checks["redis"] = f"unreachable (degraded for {down_for:.1f}s)"
    else:
        try:
            state.store.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"unreachable ({type(exc).__name__})"
            if isinstance(exc, RedisError):
                health.failed_with(exc)
    try:
        with state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=1)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"unreachable ({type(exc).__name__})"
    ok = all(v == "ok" for v in checks.values())
    held = len(state.read_path.near_cache)
    degraded = not ok and checks["redis"] != "ok" and held > 0
    body: dict[str, Any] = {"status": "ready" if ok else "degraded" if degraded else "unavailable", "checks": checks}
    if degraded:
        body["near_cache_entries"] = held
        body["detail"] = "Redis is unreachable: values held in memory are answered stale, other keys get 503"
    elif not ok:
        body["error"] = "not_ready"
        body["detail"] = "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
    return json_response(200 if ok or degraded else 503, body)


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(web_state().metrics_registry), content_type=CONTENT_TYPE_LATEST)
