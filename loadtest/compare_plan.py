"""Before `compare`: which namespaces the stack has, which to compare, and a run long enough to mean something.

A comparison shorter than its warm-up plus a few TTLs counts a handful of ideal refreshes and
reads as noise (15 s against a 10 s warm-up and a 5 s TTL held 8 ideal calls); so unless
--duration says otherwise, each namespace runs for the warm-up plus STEADY_TTLS TTLs.
"""

from __future__ import annotations

import argparse
from typing import Any

from loadtest.preflight import DEFAULT_TTL, _get_json, read_namespaces
from loadtest.verdict import choose_namespaces

WARMUP_SECONDS = 10.0
STEADY_TTLS = 6
MIN_SECONDS, MAX_SECONDS = 30.0, 120.0
# Fewer TTLs than this in the counted window, and the figures are said to be rough.
ENOUGH_TTLS = 3


def stack_namespaces(base_url: str, admin_token: str | None) -> dict[str, dict[str, Any]]:
    """{name: its settings} from GET /v1/namespaces; without the admin token, the names the public
    /status.json shows (strategy and TTL unknown); {} when neither answers."""
    found = read_namespaces(base_url, admin_token)
    if found.by_name:
        return found.by_name
    try:
        minute = _get_json(base_url.rstrip("/") + "/status.json").get("last_minute") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {name: {} for name in minute}


def default_duration(ttl: float) -> float:
    return min(MAX_SECONDS, max(MIN_SECONDS, WARMUP_SECONDS + STEADY_TTLS * ttl))


def plan_compare(args: argparse.Namespace, asked: list[str] | None, stack: dict[str, dict[str, Any]]) -> list[str]:
    """The namespaces to compare; sets args.duration when not given; prints what it will do."""
    namespaces, line = choose_namespaces(asked, stack)
    print(line)
    ttl = args.ttl or max(float(stack.get(n, {}).get("cache_ttl_seconds") or DEFAULT_TTL) for n in namespaces)
    if args.duration is None:
        args.duration = default_duration(ttl)
    total = len(namespaces) * (args.duration + args.pause) + 5 * len(namespaces)
    print(
        f"loadtest: {len(namespaces)} namespaces x {args.duration:g} s at {args.rate:g} req/s"
        f" ({WARMUP_SECONDS:g} s warm-up, then {(args.duration - WARMUP_SECONDS) / ttl:.1f} TTLs of {ttl:g} s counted):"
        f" about {total / 60:.0f} min"
    )
    if args.duration - WARMUP_SECONDS < ENOUGH_TTLS * ttl:
        print(
            f"loadtest: only {max(0.0, args.duration - WARMUP_SECONDS) / ttl:.1f} TTLs after the warm-up:"
            f" figures will be rough. Give LOADTEST_DURATION={default_duration(ttl):g} or more, or a stack"
            " with a shorter"
            " CACHE_TTL_SECONDS (make loadtest starts one with 5 s when none runs)"
        )
    return namespaces
