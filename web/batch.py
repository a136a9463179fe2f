"""A batch read's answer (POST /v1/cache/<namespace>/batch): each key's answer as one JSON object.

Each entry says what a single read of the key would have answered: `status`, `x_cache` (the
X-Cache word), `content_type`, `body` with `body_encoding` ("text" for UTF-8 JSON or text,
"base64" otherwise), `age` (seconds), `etag` and `cache_control`; a refusal carries `error`,
`detail` and `retry_after` (seconds) instead, as the single read's JSON error and Retry-After."""

from __future__ import annotations

import base64
import math
from typing import Any

from shared import metrics
from shared.answers import Answer, Refused, Served, Unstored
from shared.namespaces import Namespace
from shared.protocol import AnswerOutcome
from web.http import REFUSALS, cache_headers


def _is_text(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base.startswith("text/") or base == "application/json" or base.endswith("+json")


def _body(body: bytes, content_type: str) -> dict[str, str]:
    if _is_text(content_type):
        try:
            return {"body": body.decode("utf-8"), "body_encoding": "text"}
        except UnicodeDecodeError:
            pass
    return {"body": base64.b64encode(body).decode("ascii"), "body_encoding": "base64"}


def _served(ns: Namespace, answer: Served) -> dict[str, Any]:
    r = answer.result
    negative_hit = r.negative and answer.outcome != AnswerOutcome.MISS
    headers = cache_headers(ns, r, "NEGATIVE" if negative_hit else answer.outcome, answer.now_ms)
    if r.at_ms is not None:
        metrics.SERVED_AGE.labels(ns.name).observe(max(0, answer.now_ms - r.at_ms) / 1000)
    entry: dict[str, Any] = {
        "status": 404 if r.negative else 200,
        "x_cache": headers["X-Cache"],
        "age": int(headers["Age"]) if "Age" in headers else None,
        "etag": r.etag or None,
        "cache_control": headers.get("Cache-Control"),
    }
    if r.negative:
        metrics.REQUESTS.labels(ns.name, "negative" if negative_hit else "miss").inc()
        return entry | {"error": "not_found", "detail": "the origin has no value for this key"}
    metrics.REQUESTS.labels(ns.name, answer.outcome).inc()
    return entry | {"content_type": r.content_type} | _body(r.value or b"", r.content_type)


def entry_of(ns: Namespace, answer: Answer) -> dict[str, Any]:
    """One key's entry of the batch answer, counted as a single read's answer is."""
    if isinstance(answer, Served):
        return _served(ns, answer)
    metrics.REQUESTS.labels(ns.name, answer.outcome).inc()
    if isinstance(answer, Unstored):
        return {
            "status": 200,
            "x_cache": answer.outcome.upper(),
            "age": None,
            "etag": None,
            "cache_control": "no-store",
            "content_type": answer.content_type,
        } | _body(answer.body, answer.content_type)
    return _refused(answer)


def _refused(answer: Refused) -> dict[str, Any]:
    if answer.status == 503 and answer.error in REFUSALS:
        metrics.REFUSED.labels(answer.error).inc()
    return {
        "status": answer.status,
        "x_cache": answer.outcome.upper(),
        "error": answer.error,
        "detail": answer.detail,
        "retry_after": None if answer.retry_after_s is None else max(1, math.ceil(answer.retry_after_s)),
    }


def batch_body(ns: Namespace, answers: dict[str, Answer]) -> dict[str, Any]:
    return {key: entry_of(ns, answer) for key, answer in answers.items()}
