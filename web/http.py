"""JSON answers and the path converter shared by every blueprint of the web tier."""

from __future__ import annotations

import math
from typing import Any

from flask import Response, jsonify
from werkzeug.routing import PathConverter

from shared.answers import Refused
from shared.metrics import REFUSED
from shared.namespaces import Namespace
from shared.protocol import Refusal
from shared.store import ReadResult

REFUSALS = frozenset(Refusal)


def json_error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    if status == 503 and error in REFUSALS:
        REFUSED.labels(error).inc()
    return error_response(status, error, detail, headers)


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON error itself, counted nowhere (json_error counts a refusal)."""
    response = jsonify({"error": error, "detail": detail})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def refusal(answer: Refused, *, count: bool = True) -> Response:
    """A refused answer as its JSON error, with Retry-After in whole seconds (at least 1) when it
    has one; `count` False: not counted in herdless_refused_total (built once, sent often)."""
    headers = None
    if answer.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, math.ceil(answer.retry_after_s)))}
    build = json_error if count else error_response
    return build(answer.status, answer.error, answer.detail, headers)


def cache_headers(ns: Namespace, r: ReadResult, outcome: str, now_ms: int | None = None) -> dict[str, str]:
    """X-Cache, Age, Cache-Control and ETag of an answer from a stored entry."""
    now = r.now_ms if now_ms is None else now_ms
    headers = {"X-Cache": outcome.upper()}
    if r.at_ms is not None:
        headers["Age"] = str(max(0, (now - r.at_ms) // 1000))
    if r.soft_ms is not None:
        max_age = max(0, math.floor((r.soft_ms - now) / 1000))
        stale_ms = ns.stale_ttl_ms if r.stale_ms is None else r.stale_ms
        headers["Cache-Control"] = f"max-age={max_age}, stale-while-revalidate={stale_ms // 1000}"
    if r.etag:
        headers["ETag"] = r.etag
    return headers


def json_response(status: int, body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


class AnythingConverter(PathConverter):
    regex = "(?s:.+)"
    part_isolating = False  # may span "/" (Werkzeug would infer True: the regex holds no "/")
