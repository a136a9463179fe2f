"""The OpenAPI description of POST /v1/purge (web/group_routes.py), merged into web/openapi.py's document."""

from __future__ import annotations

from typing import Any

from shared.tags import MAX_TAG_BYTES

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def group_purge_paths(max_tags: int) -> dict[str, Any]:
    soft = {"type": "boolean", "default": False, "description": "Serve stale and refresh once per key on the next read"}
    return {
        "/v1/purge": {
            "post": {
                "operationId": "purgeGroup",
                "summary": "Purge every value carrying any of some tags, or every value of a namespace (admin)",
                "description": (
                    "Tags come from the origin's tag header (tag_header, default Surrogate-Key: space-separated), "
                    "a callable's OriginValue(tags=...) and the namespace's tags rule. Hard or soft exactly as the "
                    "per-key DELETE, for every key covered, including keys whose first value is being fetched: "
                    "no refresh that started before the purge lands afterwards. Answers once done, after every "
                    "web process dropped the purged keys from its memory."
                ),
                "security": [{"adminToken": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "required": ["tags"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "tags": {
                                                "type": "array",
                                                "minItems": 1,
                                                "maxItems": max_tags,
                                                "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_BYTES},
                                            },
                                            "soft": soft,
                                        },
                                    },
                                    {
                                        "type": "object",
                                        "required": ["namespace"],
                                        "additionalProperties": False,
                                        "properties": {"namespace": {"type": "string"}, "soft": soft},
                                    },
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The purge is complete.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GroupPurge"}}},
                    },
                    "400": _error(
                        "Not JSON, neither or both of tags and namespace, an empty, over-long or non-string tag, "
                        "an unknown field or namespace, or a soft that is not a boolean; nothing was purged."
                    ),
                    "401": _error("No bearer token."),
                    "403": _error("The token is wrong, or the admin API is disabled (ADMIN_TOKEN unset)."),
                    "413": _error("The body is larger than any valid purge; nothing was purged."),
                    "503": _error("Redis is unreachable; the purge may be partial: send it again."),
                },
            }
        }
    }


_INT = {"type": "integer", "minimum": 0}
GROUP_PURGE_SCHEMAS: dict[str, Any] = {
    "GroupPurge": {
        "type": "object",
        "required": ["soft", "purged", "keys", "members_visited", "web_processes"],
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "namespace": {"type": "string"},
            "soft": {"type": "boolean"},
            "purged": {**_INT, "description": "Values deleted (hard) or marked stale (soft)."},
            "keys": {
                "type": "object",
                "required": ["hard", "soft", "fenced", "kept"],
                "properties": {
                    "hard": _INT,
                    "soft": _INT,
                    "fenced": {**_INT, "description": "No value of the group stored; a refresh in flight stopped."},
                    "kept": {**_INT, "description": "Listed under the tag, but the stored value no longer carries it."},
                },
            },
            "members_visited": _INT,
            "web_processes": {
                "type": "object",
                "required": ["told", "confirmed"],
                "properties": {"told": _INT, "confirmed": _INT},
            },
        },
    }
}
