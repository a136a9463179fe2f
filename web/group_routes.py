"""POST /v1/purge (admin): purge the values carrying any of some tags, or a whole namespace (shared/group_purge.py)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from shared.group_purge import GroupPurge
from shared.keys import InvalidKey, validate_namespace_name
from shared.tags import MAX_TAG_BYTES, PURGE_MAX_TAGS, InvalidTag, validate_tag
from web.http import json_error, json_response
from web.routes import BadRequest, _require_admin
from web.state import web_state

bp = Blueprint("herdless_groups", __name__)

# The body no valid request can exceed (6 bytes per byte of a tag escaped as \uXXXX, its quotes and a comma).
_MAX_BODY_BYTES = PURGE_MAX_TAGS * (6 * MAX_TAG_BYTES + 4) + 4096
_USAGE = '{"tags": ["tag", ...], "soft": false} or {"namespace": "name", "soft": false}'


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest) -> Response:
    return json_error(exc.status, exc.error, exc.detail)


def _invalid(detail: str, error: str = "invalid_body") -> BadRequest:
    return BadRequest(400, error, detail)


def _body() -> dict[str, Any]:
    request.max_content_length = _MAX_BODY_BYTES  # larger: 413 before it is read
    try:
        body = json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nested past the parser's recursion
        raise _invalid(f"the body must be JSON: {_USAGE}") from None
    if not isinstance(body, dict):
        raise _invalid(f"the body must be a JSON object: {_USAGE}")
    unknown = sorted(set(body) - {"tags", "namespace", "soft"})
    if unknown:
        raise _invalid(f"unknown field(s) {unknown}; the body is {_USAGE}")
    if ("tags" in body) == ("namespace" in body):
        raise _invalid(f'give either "tags" or "namespace", not {"both" if "tags" in body else "neither"}: {_USAGE}')
    if not isinstance(body.get("soft", False), bool):
        raise _invalid('"soft" must be true or false')
    return body


def _tags(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise _invalid('"tags" must be a non-empty list of strings', "invalid_tag")
    if len(raw) > PURGE_MAX_TAGS:
        raise _invalid(f"{len(raw)} tags; at most {PURGE_MAX_TAGS} per purge", "too_many_tags")
    for i, tag in enumerate(raw):
        if not isinstance(tag, str):
            raise _invalid(f"tags[{i}] is not a string", "invalid_tag")
        try:
            validate_tag(tag)
        except InvalidTag as exc:
            raise _invalid(f"tags[{i}]: {exc}", "invalid_tag") from None
    return raw


@bp.post("/v1/purge")
def purge_group() -> Response:
    """Purge by tags or namespace, hard or soft; answers once done, with counts."""
    _require_admin()  # before the body: without the token nothing is told, not even a 400
    body = _body()
    state = web_state()
    soft = bool(body.get("soft", False))
    purge = GroupPurge(state.store, state.read_path.near_cache, state.namespaces)
    if "tags" in body:
        tags = _tags(body["tags"])
        report = purge.purge_tags(tags, soft=soft)
        return json_response(200, {"tags": tags, **report.as_json()})
    name = body["namespace"]
    try:
        ns = state.namespaces.get(validate_namespace_name(name)) if isinstance(name, str) else None
    except InvalidKey:
        ns = None
    if ns is None:
        raise _invalid(f"unknown namespace {str(name)[:80]!r}; GET /v1/namespaces lists them", "unknown_namespace")
    report = purge.purge_namespace(ns, soft=soft)
    return json_response(200, {"namespace": ns.name, **report.as_json()})
