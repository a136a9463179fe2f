"""Origin adapters: fetch one key from an HTTP URL template or a Python callable."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3

from shared.namespaces import Namespace


class OriginError(Exception):
    """The origin failed: bad status, bad body, unreachable. Counts against the breaker."""

    outcome = "error"


class OriginTimeout(OriginError):
    outcome = "timeout"


class NotFound(Exception):
    """The origin says the key does not exist (HTTP 404). Cached as a negative entry; not a failure.

    A Python callable origin raises this (or LookupError) for a missing key."""


@dataclass(frozen=True)
class OriginResponse:
    body: bytes
    content_type: str


def encode_key_for_path(key: str) -> str:
    """Percent-encode a key into one path segment: '/', '?', '#', '@' and '%' are encoded,
    and a key of only dots is encoded too so no client or proxy can resolve it as '..'."""
    encoded = quote(key, safe="")
    if set(key) == {"."}:
        encoded = encoded.replace(".", "%2E")
    return encoded


_pool = urllib3.PoolManager(num_pools=32, maxsize=64, retries=False)


def _is_json(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


class HttpOrigin:
    def __init__(self, ns: Namespace, max_bytes: int) -> None:
        self.template = ns.origin
        self.timeout = ns.origin_timeout_seconds
        self.max_bytes = max_bytes

    def url_for(self, key: str) -> str:
        return self.template.replace("{key}", encode_key_for_path(key))

    def fetch(self, key: str) -> OriginResponse:
        url = self.url_for(key)
        try:
            resp = _pool.request(
                "GET",
                url,
                preload_content=False,
                redirect=False,
                timeout=urllib3.Timeout(connect=min(self.timeout, 3.0), read=self.timeout),
                headers={"Accept": "*/*", "User-Agent": "herdless"},
            )
        except urllib3.exceptions.TimeoutError as exc:
            raise OriginTimeout(f"origin timed out after {self.timeout:g}s") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise OriginError(f"origin unreachable: {type(exc).__name__}") from exc
        complete = False
        try:
            if resp.status == 404:
                raise NotFound("origin answered 404")
            if resp.status != 200:
                raise OriginError(f"origin answered HTTP {resp.status}")
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise OriginError(f"origin body of {declared} bytes exceeds ORIGIN_MAX_BYTES={self.max_bytes}")
            body = resp.read(self.max_bytes + 1)
            if len(body) > self.max_bytes:
                raise OriginError(f"origin body exceeds ORIGIN_MAX_BYTES={self.max_bytes}")
            complete = True
        except urllib3.exceptions.TimeoutError as exc:
            raise OriginTimeout(f"origin timed out after {self.timeout:g}s") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise OriginError(f"origin read failed: {type(exc).__name__}") from exc
        finally:
            if complete:
                resp.release_conn()
            else:
                # Never hand a half-read connection back to the pool.
                resp.close()
        content_type = resp.headers.get("Content-Type", "application/octet-stream")
        if _is_json(content_type):
            try:
                json.loads(body)
            except ValueError as exc:
                raise OriginError("origin sent invalid JSON") from exc
        return OriginResponse(body=body, content_type=content_type)


class CallableOrigin:
    def __init__(self, ns: Namespace, max_bytes: int) -> None:
        module_name, func_name = ns.origin.split(":", 1)
        self.func: Callable[[str], Any] = getattr(importlib.import_module(module_name), func_name)
        self.max_bytes = max_bytes

    def fetch(self, key: str) -> OriginResponse:
        try:
            result = self.func(key)
        except (NotFound, LookupError) as exc:
            raise NotFound(str(exc)) from exc
        except OriginError:
            raise
        except Exception as exc:
            raise OriginError(f"origin callable raised {type(exc).__name__}") from exc
        if isinstance(result, bytes | bytearray):
            body, ctype = bytes(result), "application/octet-stream"
        elif isinstance(result, str):
            body, ctype = result.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            try:
                body = json.dumps(result, separators=(",", ":")).encode("utf-8")
            except (TypeError, ValueError) as exc:
                raise OriginError("origin callable returned a value that is not JSON-able") from exc
            ctype = "application/json"
        if len(body) > self.max_bytes:
            raise OriginError(f"origin body exceeds ORIGIN_MAX_BYTES={self.max_bytes}")
        return OriginResponse(body=body, content_type=ctype)


Origin = HttpOrigin | CallableOrigin


def make_origin(ns: Namespace, max_bytes: int) -> Origin:
    return HttpOrigin(ns, max_bytes) if ns.is_http else CallableOrigin(ns, max_bytes)
