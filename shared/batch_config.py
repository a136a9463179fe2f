"""A namespace's batch origin: one call that answers many keys (batch_origin, batch_max_keys, batch_window_ms).

    [namespaces.products]
    origin = "https://catalog.internal/items/{key}"
    batch_origin = "https://catalog.internal/items?ids={keys}"   # keys percent-encoded, comma-joined
    batch_max_keys = 100

The worker gathers the refreshes of such a namespace that are due together into one call of up
to ``batch_max_keys`` keys (shared/batch_origin.py); ``origin`` stays the single-key origin of
the web tier's own calls (the naive strategy, ``fallback = "origin"``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

BATCH_OPTIONS = frozenset({"batch_origin", "batch_max_keys", "batch_window_ms"})
DEFAULT_MAX_KEYS = 100
MAX_MAX_KEYS = 1000
# How long the first refresh of a batch waits for others to join it before the call is made
# (unless the batch fills first). See BatchCollector for the measurement behind it.
DEFAULT_WINDOW_MS = 20.0
MAX_WINDOW_MS = 1000.0
# Longest URL a batch call builds: a batch closes early rather than exceed it (many servers
# refuse request lines over 8 KiB).
MAX_URL_CHARS = 8000


class BatchConfigError(ValueError):
    """One option of a batch origin is invalid: `option` names it."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(problem)
        self.option = option


@dataclass(frozen=True)
class BatchConfig:
    template: str  # http(s) URL holding {keys}
    max_keys: int = DEFAULT_MAX_KEYS
    window_ms: float = DEFAULT_WINDOW_MS

    @property
    def host(self) -> str:
        return urlsplit(self.template).netloc.rpartition("@")[2]


def parse_batch_config(raw: dict[str, Any], expand: Any) -> BatchConfig | None:
    """The batch origin of a namespace's table, None when it names none; `expand` fills in
    ${VAR}s. Raises BatchConfigError."""
    given = set(raw) & BATCH_OPTIONS
    if not given:
        return None
    if "batch_origin" not in raw:
        raise BatchConfigError(", ".join(sorted(given)), "need batch_origin")
    template = raw["batch_origin"]
    if not isinstance(template, str):
        raise BatchConfigError("batch_origin", "must be an http(s) URL template holding {keys}")
    template = expand(template)
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BatchConfigError("batch_origin", "must be an http(s) URL with a host")
    if template.count("{keys}") != 1 or "{keys}" in parts.netloc or "{key}" in template:
        raise BatchConfigError("batch_origin", "must hold {keys} once, in its path or query (not {key})")
    max_keys = raw.get("batch_max_keys", DEFAULT_MAX_KEYS)
    if not isinstance(max_keys, int) or isinstance(max_keys, bool) or not 1 <= max_keys <= MAX_MAX_KEYS:
        raise BatchConfigError("batch_max_keys", f"must be a whole number from 1 to {MAX_MAX_KEYS}")
    window = raw.get("batch_window_ms", DEFAULT_WINDOW_MS)
    if not isinstance(window, int | float) or isinstance(window, bool) or not math.isfinite(window):
        raise BatchConfigError("batch_window_ms", "must be a number of milliseconds")
    if not 0 <= window <= MAX_WINDOW_MS:
        raise BatchConfigError("batch_window_ms", f"must be from 0 to {MAX_WINDOW_MS:g}")
    return BatchConfig(template, max_keys, float(window))
