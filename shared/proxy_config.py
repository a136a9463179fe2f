"""A proxy namespace's configuration: the origin's base URL, where it is mounted, what it may forward.

    [namespaces.catalog]
    proxy = "http://catalog.internal:8080/api"   # scheme, host, port, optional base path
    mount = "/catalog"                             # served at /catalog/<any path>?<any query>
    default_ttl_seconds = 0                        # fresh life of an answer without freshness info
    stale_ttl_seconds = 0                          # stale serving beyond what the answer allows
    forward_headers = ["Authorization"]            # credentials a refresh may replay (default none)

Pure parsing: ``ProxyConfigError(field, problem)`` is turned into the namespaces file's one-line
error by shared/namespaces.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

# herdless's own routes: a mount equal to one of them, inside one, or holding one stops start-up.
RESERVED_PATHS = ("/v1", "/metrics", "/healthz", "/readyz", "/status.json", "/openapi.json")
# A mount is one or more path segments of unreserved characters, no trailing slash.
_MOUNT_RE = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Request headers that carry a client's credentials: a background refresh never replays them
# unless the namespace lists them in forward_headers.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
# The options a proxy namespace takes besides the common ones (xfetch_beta, timeouts...).
PROXY_OPTIONS = frozenset({"proxy", "mount", "default_ttl_seconds", "forward_headers"})


class ProxyConfigError(ValueError):
    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(problem)
        self.field_name, self.problem = field_name, problem


@dataclass(frozen=True)
class ProxyConfig:
    """Where a proxy namespace sends its requests and where clients reach it."""

    scheme: str  # http or https
    netloc: str  # host[:port], never with userinfo
    base_path: str  # "" or "/api" (no trailing slash)
    mount: str  # "/catalog"
    default_ttl_seconds: float = 0.0
    forward_headers: frozenset[str] = frozenset()  # lower-case credential headers a refresh may replay

    @property
    def origin_name(self) -> str:
        return self.netloc

    def upstream_url(self, rest: str) -> str:
        """The origin URL of a target: `rest` is the path after the mount (empty or starting
        with "/") with its query, exactly as the client sent it, appended to the base path."""
        return f"{self.scheme}://{self.netloc}{self.base_path}{rest}"

    def _same_authority(self, parts: SplitResult) -> bool:
        """Host and port as this origin's, the scheme's default port spelt out or not."""
        default = 443 if self.scheme == "https" else 80
        ours = urlsplit(f"{self.scheme}://{self.netloc}")
        try:
            return parts.hostname == ours.hostname and (parts.port or default) == (ours.port or default)
        except ValueError:  # a port that is not a number
            return False

    def same_origin_target(self, url: str) -> str | None:
        """The target (path after the mount, with query) of a Location/Content-Location value,
        when it points at this origin under its base path; None otherwise (RFC 9111 §4.4)."""
        if url.startswith("/") and not url.startswith("//"):
            path = url  # relative to the origin
        else:
            parts = urlsplit(url)
            if parts.scheme.lower() != self.scheme or "@" in parts.netloc or not self._same_authority(parts):
                return None
            path = url[len(parts.scheme) + 3 + len(parts.netloc) :] or "/"
        if self.base_path:
            if (
                path != self.base_path
                and not path.startswith(self.base_path + "/")
                and not path.startswith(self.base_path + "?")
            ):
                return None
            path = path[len(self.base_path) :]
        return path.partition("#")[0]


def parse_proxy_config(raw: dict[str, Any]) -> ProxyConfig:
    """The proxy options of one namespace table, validated."""
    base = raw.get("proxy")
    if not isinstance(base, str) or not base:
        raise ProxyConfigError("proxy", 'must be the origin\'s base URL, e.g. "http://catalog.internal:8080"')
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https"):
        raise ProxyConfigError("proxy", "must be an http:// or https:// URL")
    if not parts.hostname:
        raise ProxyConfigError("proxy", "has no host")
    if "@" in parts.netloc:
        raise ProxyConfigError("proxy", "must not carry user:password@ (send credentials with headers = {...})")
    if parts.query or parts.fragment or "?" in base or "#" in base:
        raise ProxyConfigError("proxy", "must not carry a query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ProxyConfigError("proxy", "has an invalid port") from None
    base_path = parts.path.rstrip("/")
    if base_path and not _MOUNT_RE.match(base_path):
        raise ProxyConfigError("proxy", f"base path {base_path!r} must be plain path segments")
    mount = raw.get("mount")
    if isinstance(mount, str) and shadowed_route(mount.rstrip("/") or "/"):
        raise ProxyConfigError(
            "mount", f"{mount} shadows herdless's own route {shadowed_route(mount.rstrip('/') or '/')}"
        )
    if not isinstance(mount, str) or not _MOUNT_RE.match(mount):
        raise ProxyConfigError("mount", 'must be a path like "/catalog" (segments of A-Z a-z 0-9 . _ ~ -)')
    if any(seg in (".", "..") for seg in mount.split("/")):
        raise ProxyConfigError("mount", "must not hold a dot segment")
    ttl = raw.get("default_ttl_seconds", 0)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 <= ttl < float("inf"):
        raise ProxyConfigError("default_ttl_seconds", "must be a finite number >= 0")
    forward = raw.get("forward_headers", [])
    if not isinstance(forward, list) or not all(isinstance(h, str) and _HEADER_NAME_RE.match(h) for h in forward):
        raise ProxyConfigError("forward_headers", 'must be a list of header names, e.g. ["Authorization"]')
    return ProxyConfig(
        scheme=parts.scheme,
        netloc=parts.netloc.lower(),
        base_path=base_path,
        mount=mount,
        default_ttl_seconds=float(ttl),
        forward_headers=frozenset(h.lower() for h in forward),
    )


def shadowed_route(mount: str) -> str | None:
    """The herdless route a mount would hide (or hide itself under), if any; "/" itself included."""
    if mount in ("", "/"):
        return "/"
    for path in RESERVED_PATHS:
        if mount == path or mount.startswith(path + "/") or path.startswith(mount + "/"):
            return path
    return None


def overlapping_mounts(mounts: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """Two namespaces (names) whose mounts are equal or nested, if any: a path would have two owners."""
    seen: list[tuple[str, str]] = []
    for name, mount in mounts:
        for other_name, other in seen:
            if mount == other or mount.startswith(other + "/") or other.startswith(mount + "/"):
                return other_name, name
        seen.append((name, mount))
    return None
