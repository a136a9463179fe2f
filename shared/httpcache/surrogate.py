"""Surrogate-Control (W3C Edge Architecture 1.0): an origin's instructions to reverse proxies.

herdless announces itself on every request it sends the origin with
``Surrogate-Capability: herdless="Surrogate/1.0"`` (``with_surrogate_capability``); the
origin may then answer with ``Surrogate-Control`` directives for every surrogate
(``max-age=60``) or for this one (``max-age=60;herdless``). When such directives are present
they take priority over Cache-Control for this cache: ``max-age`` sets the freshness
lifetime (even with ``Cache-Control: no-store``), ``no-store`` forbids storing. The header is
meant for the surrogates, not the client: ``status.with_cache_fields`` removes it from answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.httpcache.cachecontrol import DELTA_CAP
from shared.httpcache.fields import Headers, get_all, split_list

DEVICE_TOKEN = "herdless"
CAPABILITY = f'{DEVICE_TOKEN}="Surrogate/1.0"'
_DIRECTIVE = re.compile(r'^([!#$%&\'*+.^_`|~0-9A-Za-z-]+)(?:=("[^"]*"|[^;\s]*))?(?:;(\S+))?$')
_DIGITS = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class SurrogateControl:
    """The Surrogate-Control directives addressed to this cache (untargeted or targeted at
    ``DEVICE_TOKEN``); ``present`` when there is at least one."""

    present: bool = False
    max_age: int | None = None
    no_store: bool = False


def parse_surrogate_control(headers: Headers) -> SurrogateControl:
    """The directives of all Surrogate-Control lines meant for this cache; the first occurrence
    of a directive wins; ``max-age`` takes digits only (capped at 2^31), an invalid one is 0."""
    seen: dict[str, str | None] = {}
    for line in get_all(headers, "surrogate-control"):
        for element in split_list(line):
            m = _DIRECTIVE.match(element.strip())
            if not m:
                continue
            name, arg, target = m.group(1).lower(), m.group(2), m.group(3)
            if target is not None and target.lower() != DEVICE_TOKEN:
                continue
            seen.setdefault(name, arg.strip('"') if arg is not None else None)
    if not seen:
        return SurrogateControl()
    max_age: int | None = None
    if "max-age" in seen:
        raw = seen["max-age"]
        max_age = min(int(raw), DELTA_CAP) if raw is not None and _DIGITS.match(raw) else 0
    return SurrogateControl(present=True, max_age=max_age, no_store="no-store" in seen)


def with_surrogate_capability(request_headers: Headers) -> Headers:
    """The headers of a request to the origin with this cache's capability appended to any
    Surrogate-Capability a surrogate before us sent."""
    previous = [v for n, v in request_headers if n.lower() == "surrogate-capability"]
    others = tuple((n, v) for n, v in request_headers if n.lower() != "surrogate-capability")
    return (*others, ("Surrogate-Capability", ", ".join([*previous, CAPABILITY])))
