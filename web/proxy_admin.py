"""Admin routes of proxy namespaces: a proxied URL's meta and purge (by its path and query), warm-ups.

    GET    /v1/proxy/<namespace>/url/<path>?<query>   what is stored for the URL: every variant (admin)
    DELETE /v1/proxy/<namespace>/url/<path>?<query>   purge the URL, every variant (admin)
    POST   /v1/proxy/<namespace>/warm                  {"targets": ["/path?query", ...]} (admin)

The URL is named as a client of the mount names it, less the mount: ``/v1/proxy/catalog/url/
v2/prices/1?currency=EUR`` is the URL a client reads at ``/catalog/v2/prices/1?currency=EUR``,
taken from the raw request URI and validated exactly as a read's target (web/proxy_target.py).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from shared.answers import WarmIncomplete
from shared.namespaces import Namespace
from shared.protocol import Refusal
from shared.proxy_read import ProxyReadPath
from shared.proxy_store import Envelope
from web.http import json_error, json_response
from web.proxy_target import MAX_TARGET_BYTES, TargetError, parse_target, raw_target
from web.routes import BadRequest, _require_admin, entry_state_json
from web.state import web_state

bp = Blueprint("proxy_admin", __name__)
PREFIX = "/v1/proxy/"


def _namespace(name: str) -> Namespace:
    ns = web_state().namespaces.get(name)
    if ns is None or ns.proxy is None:
        raise BadRequest(404, "unknown_namespace", f"no proxy namespace named {name[:64]!r}")
    return ns


def _read_path() -> ProxyReadPath:
    read_path = web_state().read_path
    assert isinstance(read_path, ProxyReadPath)
    return read_path


def _url_target(name: str) -> tuple[Namespace, str]:
    """The namespace and the validated target of a /v1/proxy/<ns>/url<target> request."""
    ns = _namespace(name)
    assert ns.proxy is not None
    raw = raw_target(request.environ) or request.full_path.rstrip("?")
    prefix = f"{PREFIX}{name}/url"
    if not raw.startswith(prefix):
        raise BadRequest(404, "not_found", "the path is /v1/proxy/<namespace>/url/<path>?<query>")
    try:
        return ns, parse_target(ns.proxy.mount + raw[len(prefix) :], ns).target
    except TargetError as exc:
        raise BadRequest(exc.status, exc.error, exc.detail) from None


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest) -> Response:
    return json_error(exc.status, exc.error, exc.detail)


@bp.get("/v1/proxy/<name>/url")
@bp.get("/v1/proxy/<name>/url/<anything:_rest>")
def url_meta(name: str, _rest: str = "") -> Response:
    """(admin) What Redis holds for a proxied URL: its primary key and every variant, read
    without changing anything."""
    _require_admin()
    ns, target = _url_target(name)
    read_path = _read_path()
    keys: list[dict[str, Any]] = []
    for i, key in enumerate(read_path.url_keys(ns, target)):
        state = read_path.store.inspect(ns, key)
        if not state.anything_stored:
            continue
        envelope = read_path.proxies.stored(ns, key)
        keys.append(
            {
                "key": key,
                "kind": "primary" if i == 0 else "variant",
                **_response_json(envelope),
                **entry_state_json(ns, state),
            }
        )
    if not keys:
        return json_error(404, "not_stored", "nothing is stored for this URL: no response, lease or queued refresh")
    return json_response(200, {"namespace": ns.name, "target": target, "keys": keys})


def _response_json(envelope: Envelope | None) -> dict[str, Any]:
    if envelope is None:
        return {"response": None}
    if envelope.is_marker:
        return {"response": {"vary_marker": list(envelope.vary)}}
    return {
        "response": {
            "status": envelope.status,
            # Names only: a value may be a credential (a forwarded Authorization, a Set-Cookie).
            "header_names": [name for name, _ in envelope.headers],
            "selecting_header_names": [name for name, _ in envelope.selecting_headers],
            "body_bytes": len(envelope.body),
        }
    }


@bp.delete("/v1/proxy/<name>/url")
@bp.delete("/v1/proxy/<name>/url/<anything:_rest>")
def url_purge(name: str, _rest: str = "") -> Response:
    """(admin) Purge every stored response of a proxied URL (every variant): hard, fenced like a
    key's purge, dropped from every web process's near-cache before the answer."""
    _require_admin()
    ns, target = _url_target(name)
    purged = _read_path().purge_url(ns, target)
    return json_response(200, {"namespace": ns.name, "target": target, "purged": purged})


@bp.post("/v1/proxy/<name>/warm")
def url_warm(name: str) -> Response:
    """(admin) Warm a list of proxied URLs: each is refreshed (one origin call, through the
    lease) unless fresh or already refreshing; a refresh replays it without request headers."""
    _require_admin()
    ns = _namespace(name)
    assert ns.proxy is not None
    limit = web_state().settings.warm_max_keys
    request.max_content_length = limit * (MAX_TARGET_BYTES + 16) + 65536
    try:
        body = json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nested past the parser's recursion
        raise BadRequest(400, "invalid_body", 'the body must be JSON: {"targets": ["/path?query", ...]}') from None
    if not isinstance(body, dict) or set(body) != {"targets"} or not isinstance(body["targets"], list):
        raise BadRequest(400, "invalid_body", 'the body must be a JSON object {"targets": ["/path?query", ...]}')
    targets = body["targets"]
    if len(targets) > limit:
        raise BadRequest(400, "too_many_targets", f"{len(targets)} targets; at most {limit} (WARM_MAX_KEYS)")
    validated: list[str] = []
    for i, target in enumerate(targets):
        if not isinstance(target, str) or not (target == "" or target.startswith(("/", "?"))):
            raise BadRequest(400, "invalid_target", f"targets[{i}] must be a string starting with '/' or '?'")
        try:
            validated.append(parse_target(ns.proxy.mount + target, ns).target)
        except TargetError as exc:
            raise BadRequest(400, exc.error, f"targets[{i}]: {exc.detail}") from None
    try:
        result = _read_path().warm_urls(ns, validated)
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
