"""The OpenAPI 3.1 document of the web API, served at /openapi.json (tests check it against the routes)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from shared.answers import FAILURE_DETAILS
from shared.keys import MAX_KEY_BYTES
from shared.namespaces import Namespace
from shared.tags import PURGE_MAX_TAGS
from web.openapi_batch import BATCH_ENTRY, batch_paths
from web.openapi_groups import GROUP_PURGE_SCHEMAS, group_purge_paths
from web.openapi_proxy import proxy_paths
from web.state import web_state

bp = Blueprint("openapi", __name__)

_ERROR = {"$ref": "#/components/schemas/Error"}
_COUNTS = {"type": "object", "additionalProperties": {"type": "number"}}
_NUM = {"type": "number"}
_NULLABLE_NUM = {"type": ["number", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
_RATES = {
    "type": "object",
    "required": ["answers", "answers_total", "answers_per_second", "fresh_share", "origin_calls", "origin_calls_total"],
    "properties": {
        "answers": {**_COUNTS, "description": "Answers of the last 60 s by outcome (herdless_requests_total's)."},
        "answers_total": _NUM,
        "answers_per_second": _NUM,
        "fresh_share": {**_NULLABLE_NUM, "description": "hit + early over all answers; null with none."},
        "origin_calls": {**_COUNTS, "description": "Origin calls of the last 60 s by outcome, counted by workers."},
        "origin_calls_total": _NUM,
        "origin_calls_per_second": _NUM,
    },
}
_ENTRY_META = {
    "type": "object",
    "required": ["namespace", "key", "now_ms", "value", "lease", "cooldown", "refresh"],
    "properties": {
        "namespace": {"type": "string"},
        "key": {"type": "string"},
        "now_ms": {"type": "integer", "description": "The Redis clock."},
        "value": {
            "oneOf": [
                {"type": "null", "description": "No value is stored (a lease or queued refresh is)."},
                {
                    "type": "object",
                    "required": ["state", "negative", "fresh_until_ms", "fresh_for_seconds", "size_bytes"],
                    "properties": {
                        "state": {"enum": ["fresh", "stale"]},
                        "negative": {"type": "boolean", "description": "A cached origin 404."},
                        "fresh_until_ms": {"type": "integer"},
                        "fresh_for_seconds": {**_NUM, "description": "Negative once stale."},
                        "early_refresh_from_ms": {
                            "type": "integer",
                            "description": "From this moment reads are EARLY (XFetch) rather than HIT.",
                        },
                        "age_seconds": _NULLABLE_NUM,
                        "refresh_duration_ms": {
                            **_NUM,
                            "description": "XFetch's d: the smoothed refresh duration plus twice its mean deviation.",
                        },
                        "refresh_duration_mean_ms": {
                            **_NULLABLE_NUM,
                            "description": "The smoothed refresh duration (won lease to write, queue wait included).",
                        },
                        "refresh_duration_spread_ms": {
                            **_NULLABLE_NUM,
                            "description": "The mean deviation of the refresh duration.",
                        },
                        "size_bytes": {"type": "integer"},
                        "etag": {"type": ["string", "null"]},
                        "kept_until_ms": {**_NULLABLE_INT, "description": "When Redis drops the entry."},
                        "soft_purged_at_ms": _NULLABLE_INT,
                    },
                },
            ]
        },
        "lease": {
            "type": "object",
            "required": ["held"],
            "properties": {"held": {"type": "boolean"}, "until_ms": _NULLABLE_INT, "seconds_left": _NULLABLE_NUM},
        },
        "cooldown": {
            "type": "object",
            "required": ["held", "consecutive_failures"],
            "properties": {
                "held": {"type": "boolean"},
                "until_ms": _NULLABLE_INT,
                "seconds_left": _NULLABLE_NUM,
                "reason": {"type": ["string", "null"]},
                "consecutive_failures": {"type": "integer"},
            },
        },
        "refresh": {
            "type": "object",
            "required": ["state"],
            "properties": {"state": {"enum": ["none", "queued", "running"]}, "marker_until_ms": _NULLABLE_INT},
        },
    },
}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ERROR}}}
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


def _target_parameters(namespaces: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "name": "namespace",
            "in": "path",
            "required": True,
            "description": "A configured namespace (namespaces.toml).",
            "schema": {"type": "string", "enum": namespaces} if namespaces else {"type": "string"},
        },
        {
            "name": "key",
            "in": "path",
            "required": True,
            "description": (
                f"The cache key, percent-encoded as one path segment: any UTF-8 text of 1 to {MAX_KEY_BYTES} "
                "bytes without control characters. A '/' in the key is sent as %2F ('?' as %3F, '#' as %23, "
                "'%' as %25); a literal '/' in the key's place is no route (404). The key reaches an HTTP "
                "origin percent-encoded as one path segment."
            ),
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_BYTES},
        },
    ]


_TARGET_ERRORS = {
    "400": _error(
        "The key is illegal (empty, not UTF-8, too long, holds a control character or a '%' that is not an "
        "escape), or the URL has a query string (query_not_allowed: only a purge takes one, ?soft=)."
    ),
    "404": _error("No such namespace, or no such route (a literal '/' in the key: send it as %2F)."),
}
# gunicorn refuses a request line over 4094 bytes before the app sees it (a legal key, 512 bytes
# of UTF-8, is at most 1536 bytes percent-encoded), so this one error is gunicorn's HTML page.
_TOO_LONG = {
    "description": "The request line exceeds 4094 bytes (answered by gunicorn, not JSON).",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
_TARGET_ERRORS = {**_TARGET_ERRORS, "414": _TOO_LONG}
_ADMIN_ERRORS = {
    "401": _error("No `Authorization: Bearer <token>` header."),
    "403": _error("Wrong token, or the admin API is disabled (ADMIN_TOKEN unset)."),
}
_UNAVAILABLE = _error("Redis or the broker is unreachable; retry after Retry-After seconds.", retry_after=True)


def build_openapi(
    namespaces: dict[str, Namespace], warm_max_keys: int = 10_000, batch_max_keys: int = 1000
) -> dict[str, Any]:
    names = sorted(name for name, ns in namespaces.items() if ns.proxy is None)  # proxies: their mounts
    target = _target_parameters(names)
    namespace_only = target[:1]
    cache_headers = {
        "X-Cache": {
            "description": (
                "How the answer was produced. MISS: this request waited for the origin's answer (a 404 "
                "too, the first time); NEGATIVE: a cached origin 404, within NEGATIVE_TTL_SECONDS; STALE "
                "also while Redis is unreachable: a value this web process holds in memory, within its "
                "stale-if-error allowance."
            ),
            "schema": {"type": "string", "enum": ["HIT", "EARLY", "STALE", "MISS", "NEGATIVE"]},
        },
        "Age": {
            "description": "Seconds since the origin call that produced the value started.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
        "Cache-Control": {
            "description": (
                "max-age=N, stale-while-revalidate=M (M is the value's own stale window: with "
                'freshness = "origin" it comes from the origin\'s answer); no-store on an answer the '
                "origin marked no-store or private, which herdless handed over without storing it."
            ),
            "schema": {"type": "string"},
        },
        "ETag": {"description": "Strong validator of the value.", "schema": {"type": "string"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "herdless",
            "version": "1",
            "description": (
                "Cache-stampede protection in front of a slow origin. Every error is JSON "
                '`{"error": code, "detail": text}`.'
            ),
        },
        "paths": {
            "/v1/cache/{namespace}/{key}": {
                "get": {
                    "operationId": "readCache",
                    "summary": "Read a key through the cache",
                    "parameters": [
                        *target,
                        {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": (
                                "The origin's bytes, with the origin's content type. An answer the origin "
                                'marked no-store or private (namespaces with freshness = "origin") is handed '
                                "to the requests that waited for it and never served from the cache."
                            ),
                            "headers": cache_headers,
                            "content": {"*/*": {"schema": {}}},
                        },
                        "304": {"description": "If-None-Match matched the stored ETag.", "headers": cache_headers},
                        **_TARGET_ERRORS,
                        "404": {
                            "description": "No such namespace, or the origin has no value for the key (cached).",
                            "headers": cache_headers,
                            "content": {"application/json": {"schema": _ERROR}},
                        },
                        "502": {
                            "description": (
                                "The origin failed and no stale value exists. `error` says why: "
                                "`origin_error` (bad status, bad body, unreachable, the callable raised), "
                                "`origin_timeout` (no answer within ORIGIN_TIMEOUT_SECONDS), `origin_too_large` "
                                "(body over ORIGIN_MAX_BYTES), `origin_unimportable` (the callable does not "
                                "import in the worker), `breaker_open` (the origin's circuit breaker is open: "
                                "no call until BREAKER_RESET_TIMEOUT_SECONDS have passed), `origin_busy` (no "
                                "concurrency slot of the origin came free)."
                            ),
                            "headers": {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OriginFailure"}}},
                        },
                        "503": _error(
                            "The cold-miss wait timed out, too many requests wait or are in flight (`overloaded`),"
                            " MAX_QUEUED_REFRESHES refreshes wait "
                            "in the queue (`queue_full`, at once), or Redis/the broker is unreachable "
                            "(`redis_unavailable`, at once: for a key this process holds no value of while Redis is "
                            "down).",
                            retry_after=True,
                        ),
                    },
                },
                "delete": {
                    "operationId": "purgeCache",
                    "summary": "Purge a key (admin); ?soft=1 only marks it stale",
                    "security": [{"adminToken": []}],
                    "parameters": [
                        *target,
                        {
                            "name": "soft",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["1", "true", "yes", "0", "false", "no"]},
                        },
                    ],
                    "responses": {
                        "204": {"description": "Purged (or nothing was stored)."},
                        **_TARGET_ERRORS,
                        **_ADMIN_ERRORS,
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/v1/cache/{namespace}/{key}/refresh": {
                "post": {
                    "operationId": "refreshCache",
                    "summary": "Enqueue a refresh of a key (admin)",
                    "security": [{"adminToken": []}],
                    "parameters": target,
                    "responses": {
                        "202": {
                            "description": "Enqueued, or a refresh is already running or cooling down.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Refresh"}}},
                        },
                        **_TARGET_ERRORS,
                        **_ADMIN_ERRORS,
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/v1/cache/{namespace}/{key}/meta": {
                "get": {
                    "operationId": "inspectCache",
                    "summary": "What is stored for a key: freshness, lease, cooldown, queued refresh (admin)",
                    "description": (
                        "Read in one round trip that changes nothing (the lease included). All times are "
                        "the Redis clock in ms since the epoch; *_seconds are relative to now_ms."
                    ),
                    "security": [{"adminToken": []}],
                    "parameters": target,
                    "responses": {
                        "200": {
                            "description": "The key's stored state.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EntryMeta"}}},
                        },
                        **_TARGET_ERRORS,
                        **_ADMIN_ERRORS,
                        "404": _error(
                            "No such namespace or route, or nothing is stored for the key (not_stored: no "
                            "value, lease or queued refresh)."
                        ),
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/v1/cache/{namespace}/warm": {
                "post": {
                    "operationId": "warmCache",
                    "summary": "Enqueue a refresh of every listed key that is not fresh (admin)",
                    "description": (
                        "Keys holding a fresh value are left alone; keys whose refresh is queued or running, or "
                        "which cool down after a failed refresh, are left to it. Every other key gets its "
                        "refresh lease and queued marker exactly as a read that misses would, so reads and "
                        "warm-ups of the same moment cost the origin one call per key. Any bad key: 400, and "
                        "nothing is enqueued. (The key named `warm` is read at /v1/cache/{namespace}/warm and "
                        "refreshed at /v1/cache/{namespace}/warm/refresh.)"
                    ),
                    "security": [{"adminToken": []}],
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
                                            "maxItems": warm_max_keys,
                                            "description": f"At most WARM_MAX_KEYS ({warm_max_keys}) keys; "
                                            "duplicates count once.",
                                            "items": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_BYTES},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "What happened to each distinct key.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Warm"}}},
                        },
                        "400": _error(
                            'The body is not JSON, not {"keys": [...]}, names more than WARM_MAX_KEYS keys, or '
                            "holds an illegal key, or the URL has a query string; nothing was enqueued."
                        ),
                        **_ADMIN_ERRORS,
                        "404": _error("No such namespace."),
                        "413": _error("The body is larger than any valid warm-up; nothing was enqueued."),
                        "503": _error(
                            "Redis or the broker is unreachable (the detail says how many refreshes were enqueued "
                            "before the broker failed; send the warm-up again).",
                            retry_after=True,
                        ),
                    },
                }
            },
            **group_purge_paths(PURGE_MAX_TAGS),
            **batch_paths(namespace_only, batch_max_keys, _error),
            "/v1/namespaces": {
                "get": {
                    "operationId": "listNamespaces",
                    "summary": "The configured namespaces and their effective settings (admin)",
                    "description": "Origin header names, never their values; an origin's host, never its URL.",
                    "security": [{"adminToken": []}],
                    "responses": {
                        "200": {
                            "description": "Every namespace of namespaces.toml, by name.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Namespaces"}}},
                        },
                        **_ADMIN_ERRORS,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process answers",
                    "responses": {
                        "200": {
                            "description": "Alive.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status"],
                                        "properties": {"status": {"const": "ok"}},
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: Redis and the broker answer (or degraded: serving from memory)",
                    "responses": {
                        "200": {
                            "description": (
                                "Ready; or degraded: Redis is unreachable, but this process answers the values "
                                "its near-cache holds (STALE) and refuses other keys at once, so keep it in rotation."
                            ),
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}},
                        },
                        "503": {
                            "description": "Redis (with nothing held in memory) or the broker is unreachable.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of this web tier",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/": {
                "get": {
                    "operationId": "statusPage",
                    "summary": "Status page: request mix, origin calls, refreshes, queue depth, breakers",
                    "responses": {
                        "200": {
                            "description": "HTML page polling /status.json.",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/status.json": {
                "get": {
                    "operationId": "statusSnapshot",
                    "summary": "The numbers behind the status page",
                    "responses": {
                        "200": {
                            "description": "A snapshot of this web process's metrics and the first worker's.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            **proxy_paths(namespaces),
        },
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"}},
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
            "schemas": {
                **GROUP_PURGE_SCHEMAS,
                "BatchEntry": BATCH_ENTRY,
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                },
                "OriginFailure": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {
                        "error": {"type": "string", "enum": sorted(FAILURE_DETAILS)},
                        "detail": {"type": "string"},
                    },
                },
                "Refresh": {
                    "type": "object",
                    "required": ["enqueued"],
                    "properties": {"enqueued": {"type": "boolean"}, "reason": {"type": "string"}},
                },
                "Warm": {
                    "type": "object",
                    "required": ["enqueued", "already_fresh", "in_flight", "cooling_down", "queue_full"],
                    "properties": {
                        "enqueued": {"type": "integer", "description": "Refreshes enqueued by this warm-up."},
                        "already_fresh": {"type": "integer", "description": "Keys holding a fresh value."},
                        "in_flight": {
                            "type": "integer",
                            "description": "Keys whose refresh was already queued or running.",
                        },
                        "cooling_down": {
                            "type": "integer",
                            "description": "Keys backing off after a failed refresh (retried when it ends).",
                        },
                        "queue_full": {
                            "type": "integer",
                            "description": "Keys not enqueued: MAX_QUEUED_REFRESHES refreshes waited already.",
                        },
                    },
                },
                "Namespaces": {
                    "type": "object",
                    "required": ["namespaces"],
                    "properties": {
                        "namespaces": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "strategy", "origin", "origin_headers"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "strategy": {"enum": ["xfetch", "swr", "lock", "naive"]},
                                    "origin": {
                                        "type": "string",
                                        "description": "host:port of an HTTP origin, or package.module:function",
                                    },
                                    "origin_headers": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "description": "Names of the headers sent to the origin (values are secret).",
                                    },
                                    "cache_ttl_seconds": {"type": "number"},
                                    "stale_ttl_seconds": {"type": "number"},
                                    "stale_if_error_seconds": {"type": "number"},
                                    "negative_ttl_seconds": {"type": "number"},
                                    "xfetch_beta": {"type": "number"},
                                    "origin_timeout_seconds": {"type": "number"},
                                    "origin_max_concurrency": {"type": "integer"},
                                    "batch_origin": {
                                        "type": ["object", "null"],
                                        "description": "The batch origin (groups.md): host:port, keys a call, window.",
                                        "properties": {
                                            "host": {"type": "string"},
                                            "max_keys": {"type": "integer"},
                                            "window_ms": {"type": "number"},
                                        },
                                    },
                                    "effective_xfetch_beta": {
                                        "type": "number",
                                        "description": "The beta reads use: xfetch_beta for xfetch, else 0.",
                                    },
                                    "serves_stale": {"type": "boolean"},
                                    "freshness": {"enum": ["fixed", "origin"]},
                                    "fallback": {"enum": ["none", "origin"]},
                                    "origin_freshness_bounds": {
                                        "oneOf": [{"type": "null"}, {"type": "object", "additionalProperties": _NUM}]
                                    },
                                    "lease_ttl_seconds": {"type": "number"},
                                    "cold_wait_timeout_seconds": {"type": "number"},
                                },
                            },
                        }
                    },
                },
                "EntryMeta": _ENTRY_META,
                "Status": {
                    "type": "object",
                    "required": ["requests", "requests_total", "queue_depth", "breakers", "last_minute", "worker"],
                    "properties": {
                        "last_minute": {
                            "description": "Per namespace, the last 60 s from every web and worker process; "
                            "null while Redis is unreachable.",
                            "oneOf": [{"type": "null"}, {"type": "object", "additionalProperties": _RATES}],
                        },
                        "requests": _COUNTS,
                        "requests_total": {"type": "number"},
                        "refresh_enqueued": _COUNTS,
                        "refresh_suppressed": _COUNTS,
                        "queue_depth": {"type": "number"},
                        "breakers": {
                            "type": "object",
                            "description": "By origin, named by the namespaces that use it (never its host).",
                            "additionalProperties": {"enum": ["closed", "half-open", "open", "unknown"]},
                        },
                        "worker": {
                            "oneOf": [
                                {"type": "null"},
                                {
                                    "type": "object",
                                    "properties": {
                                        "origin_calls": _COUNTS,
                                        "origin_calls_total": {"type": "number"},
                                        "origin_bytes_total": {
                                            "type": "number",
                                            "description": "herdless_origin_bytes_total: value bodies received.",
                                        },
                                        "refreshes": _COUNTS,
                                    },
                                },
                            ]
                        },
                    },
                },
                "Ready": {
                    "type": "object",
                    "required": ["status", "checks"],
                    "properties": {
                        "status": {"enum": ["ready", "degraded", "unavailable"]},
                        "checks": {
                            "type": "object",
                            "properties": {"redis": {"type": "string"}, "broker": {"type": "string"}},
                        },
                        "near_cache_entries": {"type": "integer", "minimum": 1},
                        "error": {"type": "string"},
                        "detail": {"type": "string"},
                    },
                },
            },
        },
    }


@bp.get("/openapi.json")
def openapi_document() -> Response:
    state = web_state()
    return jsonify(build_openapi(state.namespaces, state.settings.warm_max_keys, state.settings.batch_max_keys))
