"""HTTP routes of the web tier: cache reads, admin refresh/purge, health and metrics."""

from __future__ import annotations

import hmac
import math
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, request
from redis.exceptions import RedisError

from shared import metrics
from shared.keys import InvalidKey, decode_key
from shared.namespaces import NAMESPACE_RE, Namespace
from shared.origin import NotFound, Origin, OriginError, make_origin
from shared.settings import Settings
from shared.store import CacheStore, ReadResult, new_token
from shared.xfetch import Decision
from web.app import json_error, json_response
from web.coldwait import ColdMissWaiter, TooManyWaiters
from workers.celery_app import QUEUE, REFRESH_TASK, refresh_priority

bp = Blueprint("herdless", __name__)

PREFIX = b"/v1/cache/"


def _ext() -> dict[str, Any]:
    return current_app.extensions["herdless"]  # type: ignore[no-any-return]


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
    ns = _ext()["namespaces"].get(ns_name)
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
    settings: Settings = _ext()["settings"]
    if not settings.admin_token:
        raise BadRequest(403, "admin_disabled", "the admin API is disabled: ADMIN_TOKEN is not set")
    header = request.headers.get("Authorization", "")
    scheme, _, supplied = header.partition(" ")
    if scheme.lower() != "bearer" or not supplied:
        raise BadRequest(401, "unauthorized", "send Authorization: Bearer <ADMIN_TOKEN>")
    if not hmac.compare_digest(supplied.strip().encode(), settings.admin_token.encode()):
        raise BadRequest(403, "forbidden", "the admin token is not valid")


def _enqueue(ns: Namespace, key: str, token: str, reason: str, won_at_ms: int) -> bool:
    """Send the refresh task; on a broker failure give the lease back so a later read retries."""
    ext = _ext()
    settings: Settings = ext["settings"]
    try:
        ext["celery"].send_task(
            REFRESH_TASK,
            kwargs={"namespace": ns.name, "key": key, "token": token, "reason": reason, "won_at_ms": won_at_ms},
            queue=QUEUE,
            routing_key=QUEUE,
            priority=refresh_priority(reason, settings),
            expires=settings.lease_ttl_seconds,
        )
    except Exception:  # noqa: BLE001 - kombu raises many types; all mean "not sent"
        current_app.logger.warning("could not enqueue a refresh for namespace %s: broker unavailable", ns.name)
        try:
            ext["store"].abandon(ns, key, token)
        except RedisError:
            pass
        return False
    metrics.REFRESH_ENQUEUED.labels(ns.name, reason).inc()
    return True


def _cache_headers(ns: Namespace, r: ReadResult, outcome: str) -> dict[str, str]:
    headers = {"X-Cache": outcome.upper()}
    if r.at_ms is not None:
        headers["Age"] = str(max(0, (r.now_ms - r.at_ms) // 1000))
    if r.soft_ms is not None:
        max_age = max(0, math.floor((r.soft_ms - r.now_ms) / 1000))
        headers["Cache-Control"] = f"max-age={max_age}, stale-while-revalidate={ns.stale_ttl_ms // 1000}"
    if r.etag:
        headers["ETag"] = r.etag
    return headers


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison: W/"x" matches "x"; * matches any stored value."""
    if not if_none_match:
        return False
    tokens = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tokens or etag in tokens


def _serve(ns: Namespace, r: ReadResult, outcome: str) -> Response:
    """Answer from a stored entry (positive or negative) and record the outcome."""
    headers = _cache_headers(ns, r, "NEGATIVE" if r.negative else outcome)
    if r.at_ms is not None:
        metrics.SERVED_AGE.labels(ns.name).observe(max(0, r.now_ms - r.at_ms) / 1000)
    if r.negative:
        metrics.REQUESTS.labels(ns.name, "negative").inc()
        return json_error(404, "not_found", "the origin has no value for this key", headers)
    if r.etag and _etag_matches(request.headers.get("If-None-Match"), r.etag):
        metrics.REQUESTS.labels(ns.name, "not_modified").inc()
        return Response(status=304, headers=headers)
    metrics.REQUESTS.labels(ns.name, outcome).inc()
    return Response(r.value or b"", status=200, headers=headers, content_type=r.content_type)


def _error(ns: Namespace, status: int, error: str, detail: str, retry_after: float | None = None) -> Response:
    metrics.REQUESTS.labels(ns.name, "timeout" if status == 503 and error == "cold_wait_timeout" else "error").inc()
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return json_error(status, error, detail, headers)


def _suppressed(ns: Namespace, r: ReadResult) -> None:
    reason = "cooldown" if r.lease_state == "cooldown" else "lease_held"
    metrics.REFRESH_SUPPRESSED.labels(ns.name, reason).inc()


def _naive_origin(ns: Namespace) -> Origin:
    origins: dict[str, Origin] = _ext().setdefault("naive_origins", {})
    if ns.name not in origins:
        origins[ns.name] = make_origin(ns, _ext()["settings"].origin_max_bytes)
    return origins[ns.name]


def _read_naive(store: CacheStore, ns: Namespace, key: str) -> Response:
    """Classic cache-aside, the baseline that stampedes: every miss calls the origin from here."""
    r = store.read(ns, key, new_token())
    if r.decision is Decision.HIT:
        return _serve(ns, r, "hit")
    started = store.now_ms()
    t0 = time.perf_counter()
    try:
        resp = _naive_origin(ns).fetch(key)
        negative, body, ctype = False, resp.body, resp.content_type
        metrics.ORIGIN_CALLS.labels(ns.name, "ok").inc()
    except NotFound:
        negative, body, ctype = True, b"", "application/json"
        metrics.ORIGIN_CALLS.labels(ns.name, "not_found").inc()
    except OriginError as exc:
        metrics.ORIGIN_CALLS.labels(ns.name, exc.outcome).inc()
        return _error(ns, 502, "origin_error", str(exc))
    finally:
        metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
    store.plain_write(ns, key, started_ms=started, value=body, content_type=ctype, negative=negative)
    return _serve(ns, store.read(ns, key, new_token()), "miss")


def _wait_for_refresh(store: CacheStore, ns: Namespace, key: str, first: ReadResult) -> Response:
    """A read found nothing servable: wait (bounded) for the refresh someone enqueued."""
    ext = _ext()
    settings: Settings = ext["settings"]
    waiter: ColdMissWaiter = ext["waiter"]
    deadline = time.monotonic() + settings.cold_wait_timeout_seconds
    try:
        with waiter.join(ns.name, key) as handle:
            if not first.won_lease:
                if first.lease_state == "cooldown":
                    metrics.REFRESH_SUPPRESSED.labels(ns.name, "cooldown").inc()
                    return _error(
                        ns, 502, "origin_error", "the origin is failing; retry later", first.lease_pttl_ms / 1000
                    )
                metrics.REFRESH_SUPPRESSED.labels(ns.name, "coalesced" if handle.coalesced else "lease_held").inc()
            status: str | None = None
            while True:
                # Registered first, read second: a refresh published from here on wakes us.
                handle.mark()
                token = new_token()
                r = store.read(ns, key, token)
                if r.has_value and r.decision is not Decision.MISS:
                    return _serve(ns, r, "miss")
                if r.won_lease:
                    # No refresh is running (its worker died, or the last one failed): take over.
                    if not _enqueue(ns, key, token, "miss", r.now_ms):
                        return _error(ns, 503, "broker_unavailable", "could not enqueue the refresh", 1)
                elif r.lease_state == "cooldown" or status == "error":
                    return _error(
                        ns,
                        502,
                        "origin_error",
                        "the origin failed to produce a value",
                        max(r.lease_pttl_ms, 1000) / 1000,
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return _error(
                        ns,
                        503,
                        "cold_wait_timeout",
                        "the value is being computed; retry shortly",
                        settings.cold_wait_timeout_seconds,
                    )
                status = handle.wait(remaining)
    except TooManyWaiters:
        return _error(ns, 503, "too_many_waiters", "too many requests are waiting for cold keys", 1)


@bp.get("/v1/cache/<anything:_rest>")
def read(_rest: str) -> Response:
    target = _target()
    ns, key = target.ns, target.key
    store: CacheStore = _ext()["store"]
    started = time.perf_counter()
    try:
        if ns.strategy == "naive":
            return _read_naive(store, ns, key)
        token = new_token()
        r = store.read(ns, key, token)
        if r.decision is Decision.HIT:
            return _serve(ns, r, "hit")
        if r.decision in (Decision.EARLY, Decision.STALE):
            reason = r.decision.value.lower()
            if r.won_lease:
                _enqueue(ns, key, token, reason, r.now_ms)
            else:
                _suppressed(ns, r)
            return _serve(ns, r, reason)
        # MISS: nothing servable. Whoever won the lease enqueues; everyone waits for the refresh.
        if r.won_lease and not _enqueue(ns, key, token, "miss", r.now_ms):
            return _error(ns, 503, "broker_unavailable", "could not enqueue the refresh", 1)
        return _wait_for_refresh(store, ns, key, r)
    finally:
        metrics.REQUEST_DURATION.labels(ns.name).observe(time.perf_counter() - started)


@bp.post("/v1/cache/<anything:_rest>")
def refresh(_rest: str) -> Response:
    target = _target(b"/refresh")
    _require_admin()
    store: CacheStore = _ext()["store"]
    token = new_token()
    if not store.take_lease(target.ns, target.key, token):
        metrics.REFRESH_SUPPRESSED.labels(target.ns.name, "lease_held").inc()
        return json_response(202, {"enqueued": False, "reason": "a refresh is already running or cooling down"})
    if not _enqueue(target.ns, target.key, token, "manual", store.now_ms()):
        return json_error(503, "broker_unavailable", "could not enqueue the refresh", {"Retry-After": "1"})
    return json_response(202, {"enqueued": True})


@bp.delete("/v1/cache/<anything:_rest>")
def purge(_rest: str) -> Response:
    target = _target()
    _require_admin()
    store: CacheStore = _ext()["store"]
    if request.args.get("soft") in ("1", "true", "yes"):
        store.soft_purge(target.ns, target.key)
    else:
        store.purge(target.ns, target.key)
    return Response(status=204)


@bp.get("/healthz")
def healthz() -> Response:
    return json_response(200, {"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    ext = _ext()
    checks: dict[str, str] = {}
    try:
        ext["store"].redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"unreachable ({type(exc).__name__})"
    try:
        with ext["celery"].connection_for_write() as conn:
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

    return Response(generate_latest(_ext()["metrics_registry"]), content_type=CONTENT_TYPE_LATEST)
