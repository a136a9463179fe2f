"""Namespace definitions: each names an origin and may override the global TTLs, beta and strategy."""

from __future__ import annotations

import os
import re
import string
import tomllib
from dataclasses import dataclass
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


def _expand(template: str, settings: Settings) -> str:
    mapping = dict(os.environ)
    mapping["ORIGIN_BASE_URL"] = settings.origin_base_url
    mapping["ORIGIN_PORT"] = str(settings.origin_port)
    try:
        # {key} is ours, not an env var: only ${VAR} is substituted.
        return string.Template(template).substitute(mapping)
    except (KeyError, ValueError) as exc:
        raise NamespaceConfigError(f"origin {template!r}: unknown variable {exc}") from None


def _origin_name(origin: str) -> str:
    if origin.startswith(("http://", "https://")):
        parts = urlsplit(origin)
        return parts.netloc
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


def build_namespace(name: str, raw: dict[str, Any], settings: Settings) -> Namespace:
    if not NAMESPACE_RE.match(name):
        raise NamespaceConfigError(f"namespace name {name!r} must match {NAMESPACE_RE.pattern}")
    unknown = set(raw) - _OVERRIDABLE - set(_ORIGIN_BOUNDS) - {"strategy", "origin", "freshness"}
    if unknown:
        raise NamespaceConfigError(f"namespace {name}: unknown option(s) {sorted(unknown)}")
    strategy = raw.get("strategy", "xfetch")
    if strategy not in STRATEGIES:
        raise NamespaceConfigError(f"namespace {name}: strategy {strategy!r} is not one of {STRATEGIES}")
    if "origin" not in raw or not isinstance(raw["origin"], str):
        raise NamespaceConfigError(f"namespace {name}: origin is required")
    origin = _expand(raw["origin"], settings)
    _validate_origin(name, origin)
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
