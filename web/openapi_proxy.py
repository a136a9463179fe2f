"""The OpenAPI paths of proxy namespaces: each mount, and the proxied URLs' admin routes."""

from __future__ import annotations

from typing import Any

from shared.namespaces import Namespace

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_PATH = {
    "name": "path",
    "in": "path",
    "required": True,
    "description": "The rest of the URL, and its query string, exactly as sent: forwarded byte for byte.",
    "schema": {"type": "string"},
}
_TARGET_ERRORS = {
    "400": _error(
        "A target that could leave the origin's base path or host (a dot segment, %2e%2e, //, @, a "
        "backslash, an absolute-form target, an encoded control character): never forwarded, never stored."
    ),
    "414": _error("The target is longer than 4096 bytes."),
    "431": _error("A request header is longer than 8190 bytes, or all of them than 32768."),
}
_ADMIN_ERRORS = {
    "401": _error("No `Authorization: Bearer <token>` header."),
    "403": _error("Wrong token, or the admin API is disabled (ADMIN_TOKEN unset)."),
    "404": _error("No such proxy namespace, or nothing is stored for the URL."),
}
_NAMESPACE = {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}}
_PROXIED = {
    "description": (
        "The origin's answer (status, headers and body), from the cache or forwarded: Age and "
        "Cache-Status (RFC 9211) say which, X-Cache is HIT, STALE, MISS or PASS (never cached)."
    ),
    "headers": {
        "Cache-Status": {"schema": {"type": "string"}},
        "X-Cache": {"schema": {"enum": ["HIT", "STALE", "MISS", "PASS"]}},
    },
    "content": {"*/*": {"schema": {}}},
}


def _mount_operations(ns: Namespace, with_path: bool) -> dict[str, Any]:
    params = [_PATH] if with_path else []
    responses = {"default": _PROXIED, **_TARGET_ERRORS, "502": _error("The origin did not answer.")}
    read = {
        "summary": f"A GET of the origin of {ns.name}, answered as a shared HTTP cache would (RFC 9111)",
        "description": (
            "Freshness, Vary, conditionals (304), request directives and stale-while-revalidate as RFC "
            "9111 and 5861 say; a request carrying credentials the namespace does not forward, no-store "
            "or a Range is forwarded and not stored."
        ),
        "parameters": params,
        "responses": responses,
    }
    unsafe = {
        "summary": "Forwarded to the origin; a success invalidates the URL and a same-origin Location",
        "parameters": params,
        "responses": responses,
    }
    suffix = "Path" if with_path else "Root"
    ops = {"get": {**read, "operationId": f"proxyGet{suffix}_{ns.name}"}}
    for method in ("post", "put", "delete", "patch"):
        ops[method] = {**unsafe, "operationId": f"proxy{method.title()}{suffix}_{ns.name}"}
    return ops


def proxy_paths(namespaces: dict[str, Namespace]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    proxies = sorted(name for name, ns in namespaces.items() if ns.proxy is not None)
    namespace = {**_NAMESPACE, "schema": {"type": "string", "enum": proxies}} if proxies else _NAMESPACE
    for ns in sorted(namespaces.values(), key=lambda n: n.name):
        if ns.proxy is not None:
            paths[ns.proxy.mount] = _mount_operations(ns, with_path=False)
            paths[ns.proxy.mount + "/{path}"] = _mount_operations(ns, with_path=True)
    admin = [{"adminToken": []}]
    meta = {
        "security": admin,
        "summary": "What is stored for a proxied URL, every Vary variant (admin)",
        "responses": {"200": {"description": "The URL's keys and their state.", "content": {"application/json": {}}}},
    }
    purge = {
        "security": admin,
        "summary": "Purge a proxied URL, every Vary variant (admin)",
        "responses": {"200": {"description": "How many keys held a response.", "content": {"application/json": {}}}},
    }
    for suffix, params, op in (("", [namespace], "Root"), ("/{path}", [namespace, _PATH], "Path")):
        error_codes = {**_ADMIN_ERRORS, **_TARGET_ERRORS}
        paths[f"/v1/proxy/{{namespace}}/url{suffix}"] = {
            "get": {**meta, "operationId": f"proxyUrlMeta{op}", "parameters": params,
                    "responses": {**meta["responses"], **error_codes}},
            "delete": {**purge, "operationId": f"proxyUrlPurge{op}", "parameters": params,
                       "responses": {**purge["responses"], **error_codes}},
        }  # fmt: skip
    paths["/v1/proxy/{namespace}/warm"] = {
        "post": {
            "operationId": "proxyWarm",
            "summary": "Warm a list of proxied URLs, each replayed without request headers (admin)",
            "security": admin,
            "parameters": [namespace],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["targets"],
                            "additionalProperties": False,
                            "properties": {
                                "targets": {
                                    "type": "array",
                                    "description": "Paths with their queries as a client sends them, less the mount.",
                                    "items": {"type": "string"},
                                }
                            },
                        }
                    }
                },
            },
            "responses": {
                "202": {"description": "What happened to each distinct URL.", "content": {"application/json": {}}},
                "400": _error("A bad body or target; nothing was enqueued."),
                **_ADMIN_ERRORS,
                "503": _error("The broker is unreachable."),
            },
        }
    }
    return paths
