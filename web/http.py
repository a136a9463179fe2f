"""JSON answers and the path converter shared by every blueprint of the web tier."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from werkzeug.routing import PathConverter

from shared.metrics import REFUSED
from shared.protocol import Refusal

REFUSALS = frozenset(Refusal)


def json_error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    if status == 503 and error in REFUSALS:
        REFUSED.labels(error).inc()
    response = jsonify({"error": error, "detail": detail})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def json_response(status: int, body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


class AnythingConverter(PathConverter):
    regex = "(?s:.+)"
    part_isolating = False  # may span "/" (Werkzeug would infer True: the regex holds no "/")
