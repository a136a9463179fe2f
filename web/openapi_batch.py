"""The OpenAPI description of the batch read (POST /v1/cache/{namespace}/batch), merged into web/openapi.py's."""

from __future__ import annotations

from typing import Any

from shared.keys import MAX_KEY_BYTES

_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_STRING = {"type": ["string", "null"]}

BATCH_ENTRY: dict[str, Any] = {
    "type": "object",
    "description": (
        "What a single read of the key would have answered: its status and X-Cache word, and either "
        "the value (body, with body_encoding text for UTF-8 JSON or text, else base64) or the error "
        "code, detail and Retry-After seconds of the single read's JSON error."
    ),
    "required": ["status", "x_cache"],
    "properties": {
        "status": {"type": "integer", "enum": [200, 404, 502, 503]},
        "x_cache": {"type": "string", "enum": ["HIT", "EARLY", "STALE", "MISS", "NEGATIVE", "TIMEOUT", "ERROR"]},
        "content_type": {"type": "string"},
        "body": {"type": "string"},
        "body_encoding": {"type": "string", "enum": ["text", "base64"]},
        "age": _NULLABLE_INT,
        "etag": _NULLABLE_STRING,
        "cache_control": _NULLABLE_STRING,
        "error": {"type": "string"},
        "detail": {"type": "string"},
        "retry_after": _NULLABLE_INT,
    },
}


def batch_paths(namespace_only: list[dict[str, Any]], batch_max_keys: int, error: Any) -> dict[str, Any]:
    """The batch read's path item; `error(description)` builds a JSON error response."""
    return {
        "/v1/cache/{namespace}/batch": {
            "post": {
                "operationId": "readCacheBatch",
                "summary": "Read many keys of one namespace at once",
                "description": (
                    "Each key is answered as a single read of it would be. Keys this web process holds "
                    "fresh in memory cost no Redis round trip; the others are read in one pipelined round "
                    "trip per Redis node, each missing key's refresh is enqueued once, and the request "
                    "waits for them together (COLD_WAIT_TIMEOUT_SECONDS at most): a key that did not "
                    "arrive gets its own 503 (or 502 for a failed refresh) entry. Duplicate keys are "
                    "answered once. Any bad key: 400, and nothing is read or enqueued. (The key named "
                    "`batch` is read at /v1/cache/{namespace}/batch with GET.)"
                ),
                "parameters": namespace_only,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["keys"],
                                "additionalProperties": False,
                                "properties": {
                                    "keys": {
                                        "type": "array",
                                        "maxItems": batch_max_keys,
                                        "description": f"At most BATCH_MAX_KEYS ({batch_max_keys}) keys.",
                                        "items": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_BYTES},
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Each distinct key's answer, keyed by key, in the order asked.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": {"$ref": "#/components/schemas/BatchEntry"},
                                }
                            }
                        },
                    },
                    "400": error(
                        'The body is not JSON, not {"keys": [...]}, names more than BATCH_MAX_KEYS keys, or '
                        "holds an illegal key, or the URL has a query string; nothing was read or enqueued."
                    ),
                    "404": error("No such namespace."),
                    "413": error("The body is larger than any valid batch read; nothing was read."),
                    "503": error("Redis is unreachable and the process holds none of the keys."),
                },
            }
        }
    }
