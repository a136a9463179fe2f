"""Namespace definitions: each names an origin and may override the global TTLs, beta and strategy."""

from __future__ import annotations

import os
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.settings import STRATEGIES, Settings

NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_OVERRIDABLE = {
    "cache_ttl_seconds",
    "stale_ttl_seconds",
    "stale_if_error_seconds",
    "negative_ttl_seconds",
    "xfetch_beta",
    "origin_timeout_seconds",
    "origin_max_concurrency",
}

FRESHNESS_MODES = ("fixed", "origin")

# Bounds that clamp what an origin's Cache-Control asks for (freshness = "origin" only), with
# their defaults in seconds. Each pair bounds one of the three lifetimes an origin may set.
_ORIGIN_BOUNDS: dict[str, float] = {
    "min_ttl_seconds": 1.0,  # fresh life (s-maxage, max-age, Expires)
    "max_ttl_seconds": 86400.0,
    "min_stale_seconds": 0.0,  # stale window (stale-while-revalidate)
    "max_stale_seconds": 86400.0,
    "min_stale_if_error_seconds": 0.0,  # outage extension (stale-if-error)
    "max_stale_if_error_seconds": 86400.0,
}


class NamespaceConfigError(ValueError):
    """The namespaces file is missing, unreadable or describes an invalid namespace."""


# RFC 9110 token: what a header name may be.
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers herdless sets itself (or the HTTP client does) on every origin request.
_RESERVED_HEADERS = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "if-none-match",
    "if-modified-since",
}


@dataclass(frozen=True)
class OriginHeaders:
    """Request headers sent to a namespace's origin on every refresh (credentials, mostly). The
    values are secrets: repr and str show the names only, so no log line or error built from
    a namespace can carry them."""

    items: tuple[tuple[str, str], ...] = ()

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.items]

    def as_dict(self) -> dict[str, str]:
        return dict(self.items)

    def __repr__(self) -> str:
        return f"OriginHeaders({self.names})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.items)


@dataclass(frozen=True)
class Namespace:
    name: str
    strategy: str
    origin: str  # "http(s)://host/path/{key}" or "package.module:function"
    origin_name: str  # bounded label for metrics and the breaker: host:port or module:function
    cache_ttl_seconds: float
    stale_ttl_seconds: float
    stale_if_error_seconds: float
    negative_ttl_seconds: float
    xfetch_beta: float
    origin_timeout_seconds: float
    origin_max_concurrency: int
    # "fixed": lifetimes from the TTL settings above; "origin": from each answer's Cache-Control
    # (or Expires), clamped by the bounds below, the settings above being the fallback.
    freshness: str = "fixed"
    min_ttl_seconds: float = _ORIGIN_BOUNDS["min_ttl_seconds"]
    max_ttl_seconds: float = _ORIGIN_BOUNDS["max_ttl_seconds"]
    min_stale_seconds: float = _ORIGIN_BOUNDS["min_stale_seconds"]
    max_stale_seconds: float = _ORIGIN_BOUNDS["max_stale_seconds"]
    min_stale_if_error_seconds: float = _ORIGIN_BOUNDS["min_stale_if_error_seconds"]
    max_stale_if_error_seconds: float = _ORIGIN_BOUNDS["max_stale_if_error_seconds"]
    origin_headers: OriginHeaders = field(default_factory=OriginHeaders)

    @property
    def is_http(self) -> bool:
        return self.origin.startswith(("http://", "https://"))

    @property
    def serves_stale(self) -> bool:
        return self.strategy in ("xfetch", "swr")

    @property
    def beta(self) -> float:
        """Effective XFetch beta: only the xfetch strategy refreshes early."""
        return self.xfetch_beta if self.strategy == "xfetch" else 0.0

    @property
    def soft_ttl_ms(self) -> int:
        return int(self.cache_ttl_seconds * 1000)

    @property
    def stale_ttl_ms(self) -> int:
        # lock and naive never serve past soft; keep the value a little longer anyway so
        # that a lock waiter can still compare ages, but it is never answered stale.
        return int(self.stale_ttl_seconds * 1000) if self.serves_stale else 0


def _environment(settings: Settings) -> dict[str, str]:
    mapping = dict(os.environ)
    mapping["ORIGIN_BASE_URL"] = settings.origin_base_url
    mapping["ORIGIN_PORT"] = str(settings.origin_port)
    return mapping


def _expand(template: str, settings: Settings) -> str:
    mapping = _environment(settings)
    try:
        # {key} is ours, not an env var: only ${VAR} is substituted.
        return string.Template(template).substitute(mapping)
    except (KeyError, ValueError) as exc:
        raise NamespaceConfigError(f"origin {template!r}: unknown variable {exc}") from None


def _origin_name(origin: str) -> str:
    if origin.startswith(("http://", "https://")):
        # host:port only: user:password@ in an origin URL must not become a metric label.
        return urlsplit(origin).netloc.rpartition("@")[2]
    return origin


def _validate_origin(name: str, origin: str) -> None:
    if origin.startswith(("http://", "https://")):
        parts = urlsplit(origin)
        if not parts.hostname:
            raise NamespaceConfigError(f"namespace {name}: origin {origin!r} has no host")
        if "{key}" not in parts.path or "{key}" in parts.netloc:
            raise NamespaceConfigError(f"namespace {name}: origin {origin!r} must carry {{key}} in its path")
        return
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", origin):
        raise NamespaceConfigError(
            f"namespace {name}: origin {origin!r} must be an http(s) URL template or package.module:function"
        )


def _origin_headers(name: str, raw: Any, origin: str, settings: Settings) -> OriginHeaders:
    """`headers = { Authorization = "Bearer ${ORIGIN_TOKEN}" }`: names checked, ${VAR} filled in
    from the environment. Errors name the namespace, the header and the variable, never a value
    (neither the template's nor the environment's: either may hold the secret)."""
    if raw is None:
        return OriginHeaders()
    if not isinstance(raw, dict):
        raise NamespaceConfigError(
            f'namespace {name}: headers must be a table, e.g. headers = {{ X-Api-Key = "${{KEY}}" }}'
        )
    if raw and not origin.startswith(("http://", "https://")):
        raise NamespaceConfigError(f"namespace {name}: headers apply to http(s) origins only")
    env = _environment(settings)
    seen: set[str] = set()
    items: list[tuple[str, str]] = []
    for header, template in raw.items():
        if not _HEADER_NAME_RE.match(header):
            raise NamespaceConfigError(f"namespace {name}: {header!r} is not a valid HTTP header name")
        if header.lower() in _RESERVED_HEADERS:
            raise NamespaceConfigError(f"namespace {name}: header {header} is set by herdless and cannot be configured")
        if header.lower() in seen:
            raise NamespaceConfigError(f"namespace {name}: header {header} is given twice")
        seen.add(header.lower())
        if not isinstance(template, str):
            raise NamespaceConfigError(f"namespace {name}: header {header} must be a string")
        parsed = string.Template(template)
        if not parsed.is_valid():
            raise NamespaceConfigError(f"namespace {name}: header {header}: write variables as ${{NAME}}; $$ is a $")
        for variable in parsed.get_identifiers():
            if variable not in env:
                raise NamespaceConfigError(
                    f"namespace {name}: header {header} needs the environment variable {variable}, which is not set"
                )
            if not env[variable]:
                raise NamespaceConfigError(
                    f"namespace {name}: header {header} needs the environment variable {variable}, which is empty"
                )
        value = parsed.substitute(env)
        if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
            raise NamespaceConfigError(
                f"namespace {name}: the value of header {header} holds a control character (a line break?)"
            )
        items.append((header, value))
    return OriginHeaders(tuple(items))


def build_namespace(name: str, raw: dict[str, Any], settings: Settings) -> Namespace:
    if not NAMESPACE_RE.match(name):
        raise NamespaceConfigError(f"namespace name {name!r} must match {NAMESPACE_RE.pattern}")
    unknown = set(raw) - _OVERRIDABLE - set(_ORIGIN_BOUNDS) - {"strategy", "origin", "freshness", "headers"}
    if unknown:
        raise NamespaceConfigError(f"namespace {name}: unknown option(s) {sorted(unknown)}")
    strategy = raw.get("strategy", "xfetch")
    if strategy not in STRATEGIES:
        raise NamespaceConfigError(f"namespace {name}: strategy {strategy!r} is not one of {STRATEGIES}")
    if "origin" not in raw or not isinstance(raw["origin"], str):
        raise NamespaceConfigError(f"namespace {name}: origin is required")
    origin = _expand(raw["origin"], settings)
    _validate_origin(name, origin)
    headers = _origin_headers(name, raw.get("headers"), origin, settings)
    values: dict[str, Any] = {}
    for option in _OVERRIDABLE:
        value = raw.get(option, getattr(settings, option))
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise NamespaceConfigError(f"namespace {name}: {option} must be a number")
        positive = option in {
            "cache_ttl_seconds",
            "negative_ttl_seconds",
            "origin_timeout_seconds",
            "origin_max_concurrency",
        }
        if value < 0 or (positive and value == 0):
            raise NamespaceConfigError(f"namespace {name}: {option}={value} is out of range")
        if option == "origin_max_concurrency" and value != int(value):
            raise NamespaceConfigError(f"namespace {name}: {option} must be a whole number")
        values[option] = float(value)
    max_conc = int(values.pop("origin_max_concurrency"))
    return Namespace(
        name=name,
        strategy=strategy,
        origin=origin,
        origin_name=_origin_name(origin),
        origin_max_concurrency=max_conc,
        origin_headers=headers,
        **values,
        **_freshness_options(name, raw),
    )


def _freshness_options(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """freshness and, with freshness = "origin", the bounds that clamp the origin's lifetimes."""
    freshness = raw.get("freshness", "fixed")
    if freshness not in FRESHNESS_MODES:
        raise NamespaceConfigError(f"namespace {name}: freshness {freshness!r} is not one of {FRESHNESS_MODES}")
    given = sorted(set(raw) & set(_ORIGIN_BOUNDS))
    if given and freshness != "origin":
        raise NamespaceConfigError(f'namespace {name}: {", ".join(given)} need freshness = "origin"')
    options: dict[str, Any] = {"freshness": freshness}
    for option, default in _ORIGIN_BOUNDS.items():
        value = raw.get(option, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise NamespaceConfigError(f"namespace {name}: {option} must be a number >= 0")
        options[option] = float(value)
    for low, high in (
        ("min_ttl_seconds", "max_ttl_seconds"),
        ("min_stale_seconds", "max_stale_seconds"),
        ("min_stale_if_error_seconds", "max_stale_if_error_seconds"),
    ):
        if options[low] > options[high]:
            raise NamespaceConfigError(f"namespace {name}: {low}={options[low]:g} exceeds {high}={options[high]:g}")
    return options


def load_namespaces(settings: Settings, path: Path | None = None) -> dict[str, Namespace]:
    path = path or settings.namespaces_file
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NamespaceConfigError(f"NAMESPACES_FILE {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise NamespaceConfigError(f"NAMESPACES_FILE {str(path)!r}: {exc}") from None
    table = data.get("namespaces")
    if not isinstance(table, dict) or not table:
        raise NamespaceConfigError(f"NAMESPACES_FILE {str(path)!r} defines no [namespaces.<name>] table")
    return {name: build_namespace(name, raw, settings) for name, raw in table.items()}
