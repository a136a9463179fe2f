"""Namespace definitions: each names an origin and may override the global TTLs, beta and strategy."""

from __future__ import annotations

import importlib
import math
import os
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from shared.batch_config import BATCH_OPTIONS, BatchConfig, BatchConfigError, parse_batch_config
from shared.protocol import Fallback, Freshness, Strategy
from shared.proxy_config import PROXY_OPTIONS, ProxyConfig, ProxyConfigError, overlapping_mounts, parse_proxy_config
from shared.settings import Settings, redact_url
from shared.tags import DEFAULT_TAG_HEADER, tag_options

NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_OPTIONS = {"strategy", "origin", "freshness", "headers", "fallback", "tags", "tag_header"}
_OVERRIDABLE = {
    "cache_ttl_seconds",
    "stale_ttl_seconds",
    "stale_if_error_seconds",
    "negative_ttl_seconds",
    "xfetch_beta",
    "origin_timeout_seconds",
    "origin_max_concurrency",
}


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


class NamespaceConfigError(SystemExit):
    """The namespaces file is missing, unreadable or describes an invalid namespace.

    Like SettingsError, a SystemExit: uncaught (`python -c "...load_namespaces(...)"`, a Celery
    or gunicorn import) it stops the process with its one-line message and no traceback. Its
    message names the file (load_namespaces adds it), the table and the field."""

    def __str__(self) -> str:
        return str(self.code)


def _bad(name: str, field_name: str, problem: str) -> NoReturn:
    raise NamespaceConfigError(f"[namespaces.{name}]{' ' if field_name else ''}{field_name}: {problem}")


class CallableImportError(Exception):
    """A `package.module:function` origin that this process cannot import."""


def import_callable(spec: str) -> Any:
    """The function a `package.module:function` origin names. Raises CallableImportError with
    one line naming the module (or the function) and why, e.g. `module 'myapp' cannot be
    imported (ModuleNotFoundError: No module named 'myapp')`."""
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the module raises while importing
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise CallableImportError(f"module {module_name!r} cannot be imported ({detail})") from None
    func = getattr(module, func_name, None)
    if func is None:
        raise CallableImportError(f"module {module_name!r} has no attribute {func_name!r}")
    if not callable(func):
        raise CallableImportError(f"{spec} is not callable")
    return func


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
    strategy: Strategy
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
    freshness: Freshness = Freshness.FIXED
    # While Redis is unreachable, what a cold key answers: 503 (none) or the origin's answer,
    # fetched by the web process itself (origin; shared/degraded.py OriginFallback).
    fallback: Fallback = Fallback.NONE
    min_ttl_seconds: float = _ORIGIN_BOUNDS["min_ttl_seconds"]
    max_ttl_seconds: float = _ORIGIN_BOUNDS["max_ttl_seconds"]
    min_stale_seconds: float = _ORIGIN_BOUNDS["min_stale_seconds"]
    max_stale_seconds: float = _ORIGIN_BOUNDS["max_stale_seconds"]
    min_stale_if_error_seconds: float = _ORIGIN_BOUNDS["min_stale_if_error_seconds"]
    max_stale_if_error_seconds: float = _ORIGIN_BOUNDS["max_stale_if_error_seconds"]
    origin_headers: OriginHeaders = field(default_factory=OriginHeaders)
    # Tags every value carries ({key} is the key) and the origin header that names more (shared/tags.py).
    tags: tuple[str, ...] = ()
    tag_header: str = DEFAULT_TAG_HEADER
    # A reverse proxy for a whole origin (shared/proxy_config.py): its keys are proxied URLs.
    proxy: ProxyConfig | None = None
    # An origin answering many keys in one call (shared/batch_config.py); None: one key a call.
    batch: BatchConfig | None = None

    @property
    def is_proxy(self) -> bool:
        return self.proxy is not None

    @property
    def is_http(self) -> bool:
        return self.origin.startswith(("http://", "https://"))

    @property
    def serves_stale(self) -> bool:
        return self.strategy in (Strategy.XFETCH, Strategy.SWR)

    @property
    def beta(self) -> float:
        """Effective XFetch beta: only the xfetch strategy refreshes early."""
        return self.xfetch_beta if self.strategy is Strategy.XFETCH else 0.0

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
        raise NamespaceConfigError(f"unknown variable {exc} in {template!r}") from None


def _origin_name(origin: str) -> str:
    if origin.startswith(("http://", "https://")):
        # host:port only: user:password@ in an origin URL must not become a metric label.
        return urlsplit(origin).netloc.rpartition("@")[2]
    return origin


def mask_url(url: str) -> str:
    """An origin URL with any user:password@ replaced by ***@ (a raw @ in the password
    included) and any ?password= hidden, for messages and logs."""
    return redact_url(url, hide_user=True)


def _validate_origin(name: str, origin: str) -> None:
    if origin.startswith(("http://", "https://")):
        parts = urlsplit(origin)
        if not parts.hostname:
            _bad(name, "origin", f"{mask_url(origin)!r} has no host")
        if "{key}" not in parts.path or "{key}" in parts.netloc:
            _bad(name, "origin", f"{mask_url(origin)!r} must carry {{key}} in its path")
        return
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", origin):
        _bad(name, "origin", f"{origin!r} must be an http(s) URL template or package.module:function")


def _origin_headers(name: str, raw: Any, origin: str, settings: Settings) -> OriginHeaders:
    """`headers = { Authorization = "Bearer ${ORIGIN_TOKEN}" }`: names checked, ${VAR} filled in
    from the environment. Errors name the namespace, the header and the variable, never a value
    (neither the template's nor the environment's: either may hold the secret)."""
    if raw is None:
        return OriginHeaders()
    if not isinstance(raw, dict):
        _bad(name, "headers", 'must be a table, e.g. headers = { X-Api-Key = "${KEY}" }')
    if raw and not origin.startswith(("http://", "https://")):
        _bad(name, "headers", "apply to http(s) origins only")
    env = _environment(settings)
    seen: set[str] = set()
    items: list[tuple[str, str]] = []
    for header, template in raw.items():
        if not _HEADER_NAME_RE.match(header):
            _bad(name, "headers", f"{header!r} is not a valid HTTP header name")
        if header.lower() in _RESERVED_HEADERS:
            _bad(name, "headers", f"header {header} is set by herdless and cannot be configured")
        if header.lower() in seen:
            _bad(name, "headers", f"header {header} is given twice")
        seen.add(header.lower())
        if not isinstance(template, str):
            _bad(name, "headers", f"header {header} must be a string")
        parsed = string.Template(template)
        if not parsed.is_valid():
            _bad(name, "headers", f"header {header}: write variables as ${{NAME}}; $$ is a $")
        for variable in parsed.get_identifiers():
            if variable not in env:
                _bad(name, "headers", f"header {header} needs the environment variable {variable}, which is not set")
            if not env[variable]:
                _bad(name, "headers", f"header {header} needs the environment variable {variable}, which is empty")
        value = parsed.substitute(env)
        if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
            _bad(name, "headers", f"the value of header {header} holds a control character (a line break?)")
        items.append((header, value))
    return OriginHeaders(tuple(items))


def build_namespace(name: str, raw: dict[str, Any], settings: Settings) -> Namespace:
    if not NAMESPACE_RE.match(name):
        raise NamespaceConfigError(f"[namespaces.{name}]: the name must match {NAMESPACE_RE.pattern}")
    if "proxy" in raw:
        return _build_proxy_namespace(name, raw, settings)
    unknown = set(raw) - _OVERRIDABLE - set(_ORIGIN_BOUNDS) - _OPTIONS - BATCH_OPTIONS
    if unknown:
        _bad(name, ", ".join(sorted(unknown)), "unknown option")
    try:
        strategy = Strategy(raw.get("strategy", Strategy.XFETCH))
    except ValueError:
        _bad(name, "strategy", f"{raw['strategy']!r} is not one of {tuple(map(str, Strategy))}")
    if "origin" not in raw or not isinstance(raw["origin"], str):
        _bad(name, "origin", "is required (an http(s) URL template or package.module:function)")
    try:
        origin = _expand(raw["origin"], settings)
    except NamespaceConfigError as exc:
        _bad(name, "origin", str(exc))
    _validate_origin(name, origin)
    headers = _origin_headers(name, raw.get("headers"), origin, settings)
    try:
        fallback = Fallback(raw.get("fallback", Fallback.NONE))
    except ValueError:
        _bad(name, "fallback", f"{raw['fallback']!r} is not one of {tuple(map(str, Fallback))}")
    if fallback is Fallback.ORIGIN and strategy is Strategy.NAIVE:
        _bad(name, "fallback", "the naive strategy calls the origin from the web tier already")
    values: dict[str, Any] = {}
    for option in _OVERRIDABLE:
        value = raw.get(option, getattr(settings, option))
        if not isinstance(value, int | float) or isinstance(value, bool):
            _bad(name, option, f"must be a number, not {value!r}")
        positive = option in {
            "cache_ttl_seconds",
            "negative_ttl_seconds",
            "origin_timeout_seconds",
            "origin_max_concurrency",
        }
        if not math.isfinite(value):
            _bad(name, option, f"must be a finite number, not {value}")
        if value < 0 or (positive and value == 0):
            _bad(name, option, f"{value} is out of range (must be {'> 0' if positive else '>= 0'})")
        if option == "origin_max_concurrency" and value != int(value):
            _bad(name, option, f"must be a whole number, not {value}")
        values[option] = float(value)
    max_conc = int(values.pop("origin_max_concurrency"))
    try:
        batch = parse_batch_config(raw, lambda template: _expand(template, settings))
    except BatchConfigError as exc:
        _bad(name, exc.option, str(exc))
    except NamespaceConfigError as exc:
        _bad(name, "batch_origin", str(exc))
    if batch is not None and strategy is Strategy.NAIVE:
        _bad(name, "batch_origin", "the naive strategy calls the origin from the web tier, one key at a time")
    return Namespace(
        name=name,
        strategy=strategy,
        origin=origin,
        batch=batch,
        origin_name=_origin_name(origin),
        origin_max_concurrency=max_conc,
        origin_headers=headers,
        fallback=fallback,
        **values,
        **_freshness_options(name, raw),
        **tag_options(raw, lambda field_name, problem: _bad(name, field_name, problem)),
    )


# A proxy namespace's default XFetch beta, not XFETCH_BETA's: a response lives its max-age
# minus the head start (d * beta on average), so every point of beta costs the origin d/max-age
# more calls; at 1 a 100 ms origin behind max-age=5 costs 1.02x the ideal cache's calls.
PROXY_XFETCH_BETA = 1.0

# Options of a key-value namespace that a proxy namespace does not take: its freshness is RFC 9111's.
_NOT_FOR_PROXY = {"origin", "freshness", "fallback", "cache_ttl_seconds", "negative_ttl_seconds", *_ORIGIN_BOUNDS}


def _build_proxy_namespace(name: str, raw: dict[str, Any], settings: Settings) -> Namespace:
    """A reverse-proxy namespace: `proxy` and `mount` (shared/proxy_config.py); stale_ttl_seconds
    and stale_if_error_seconds default to 0 (RFC 9111 behaviour), not to the global settings."""
    unknown = set(raw) - _OVERRIDABLE - PROXY_OPTIONS - {"strategy", "headers"}
    if unknown:
        not_here = sorted(unknown & _NOT_FOR_PROXY)
        if not_here:
            _bad(name, ", ".join(not_here), "does not apply to a proxy namespace (its answers' own headers decide)")
        _bad(name, ", ".join(sorted(unknown)), "unknown option")
    try:
        proxy = _expand(raw["proxy"], settings) if isinstance(raw["proxy"], str) else raw["proxy"]
    except NamespaceConfigError as exc:
        _bad(name, "proxy", str(exc))
    try:
        config = parse_proxy_config({**raw, "proxy": proxy})
    except ProxyConfigError as exc:
        _bad(name, exc.field_name, exc.problem)
    try:
        strategy = Strategy(raw.get("strategy", Strategy.XFETCH))
    except ValueError:
        _bad(name, "strategy", f"{raw['strategy']!r} is not one of {tuple(map(str, Strategy))}")
    if strategy not in (Strategy.XFETCH, Strategy.SWR):
        _bad(name, "strategy", "a proxy namespace is xfetch or swr")
    base = f"{config.scheme}://{config.netloc}{config.base_path}"
    headers = _origin_headers(name, raw.get("headers"), base, settings)
    values: dict[str, Any] = {}
    for option, default in (
        ("stale_ttl_seconds", 0.0),
        ("stale_if_error_seconds", 0.0),
        ("xfetch_beta", PROXY_XFETCH_BETA),
        ("origin_timeout_seconds", settings.origin_timeout_seconds),
        ("origin_max_concurrency", settings.origin_max_concurrency),
    ):
        value = raw.get(option, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
            _bad(name, option, f"must be a finite number >= 0, not {value!r}")
        if option in ("origin_timeout_seconds", "origin_max_concurrency") and value == 0:
            _bad(name, option, "must be > 0")
        if option == "origin_max_concurrency" and value != int(value):
            _bad(name, option, f"must be a whole number, not {value}")
        values[option] = float(value)
    return Namespace(
        name=name,
        strategy=strategy,
        origin=base,
        origin_name=config.origin_name,
        cache_ttl_seconds=config.default_ttl_seconds,
        stale_ttl_seconds=values["stale_ttl_seconds"],
        stale_if_error_seconds=values["stale_if_error_seconds"],
        negative_ttl_seconds=config.default_ttl_seconds,
        xfetch_beta=values["xfetch_beta"],
        origin_timeout_seconds=values["origin_timeout_seconds"],
        origin_max_concurrency=int(values["origin_max_concurrency"]),
        origin_headers=headers,
        proxy=config,
    )


def _freshness_options(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """freshness and, with freshness = "origin", the bounds that clamp the origin's lifetimes."""
    try:
        freshness = Freshness(raw.get("freshness", Freshness.FIXED))
    except ValueError:
        _bad(name, "freshness", f"{raw['freshness']!r} is not one of {tuple(map(str, Freshness))}")
    given = sorted(set(raw) & set(_ORIGIN_BOUNDS))
    if given and freshness is not Freshness.ORIGIN:
        _bad(name, ", ".join(given), 'need freshness = "origin"')
    options: dict[str, Any] = {"freshness": freshness}
    for option, default in _ORIGIN_BOUNDS.items():
        value = raw.get(option, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0 or math.isinf(value):
            _bad(name, option, "must be a finite number >= 0")
        options[option] = float(value)
    for low, high in (
        ("min_ttl_seconds", "max_ttl_seconds"),
        ("min_stale_seconds", "max_stale_seconds"),
        ("min_stale_if_error_seconds", "max_stale_if_error_seconds"),
    ):
        if options[low] > options[high]:
            _bad(name, low, f"{options[low]:g} exceeds {high}={options[high]:g}")
    return options


def load_namespaces(
    settings: Settings, path: Path | None = None, *, import_callables: bool = True
) -> dict[str, Namespace]:
    """Every namespace of the file, validated. With `import_callables`, each Python-callable
    origin is imported now, so a process that could not call it stops at start (naming the
    namespace and the module) rather than failing every refresh of it later.

    Raises NamespaceConfigError (a SystemExit) with one line: `herdless: <file>: [namespaces.<name>]
    <field>: <problem>`."""
    path = Path(path or settings.namespaces_file)
    where = f"herdless: NAMESPACES_FILE {str(path)!r}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NamespaceConfigError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NamespaceConfigError(f"{where} cannot be read ({type(exc).__name__}: {exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise NamespaceConfigError(f"{where} is not valid TOML: {exc}") from None
    table = data.get("namespaces")
    if not isinstance(table, dict) or not table:
        raise NamespaceConfigError(f"{where} defines no [namespaces.<name>] table")
    namespaces: dict[str, Namespace] = {}
    for name, raw in table.items():
        try:
            if not isinstance(raw, dict):
                _bad(name, "", "must be a table ([namespaces.<name>] with origin = ...)")
            ns = namespaces[name] = build_namespace(name, raw, settings)
            if import_callables and not ns.is_http:
                try:
                    import_callable(ns.origin)
                except CallableImportError as exc:
                    _bad(name, "origin", f"{ns.origin} cannot be used: {exc}; {CALLABLE_HINT}")
        except NamespaceConfigError as exc:
            raise NamespaceConfigError(f"{where}: {exc}") from None
    clash = overlapping_mounts((ns.name, ns.proxy.mount) for ns in namespaces.values() if ns.proxy is not None)
    if clash:
        raise NamespaceConfigError(
            f"{where}: [namespaces.{clash[1]}] mount: overlaps the mount of [namespaces.{clash[0]}]"
        )
    return namespaces


# What to do about an origin callable that does not import (docs/configuration.md: "Namespaces and origins").
CALLABLE_HINT = (
    "the web tier and the workers must both import it: install its package, or put the directory "
    "that holds it on PYTHONPATH"
)
