"""Before a load test on a running stack: its namespaces' TTLs, and no circuit breaker open.

A TTL assumed rather than read made every per-TTL-window figure wrong by the ratio (the stack ran
with 5 s, the load test assumed 30), and a run against an open breaker measures only the
breaker. GET /v1/namespaces may need the admin token: ADMIN_TOKEN is sent as a Bearer token
when set, and without an answer the load test falls back to --ttl (or 5 s) and says so.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TTL = 5.0


@dataclass
class StackNamespaces:
    """What GET /v1/namespaces said: {name: namespace}; `problem` says why it is empty."""

    by_name: dict[str, dict[str, Any]] = field(default_factory=dict)
    problem: str = ""


def _get_json(url: str, token: str | None = None, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def read_namespaces(base_url: str, admin_token: str | None) -> StackNamespaces:
    url = base_url.rstrip("/") + "/v1/namespaces"
    try:
        body = _get_json(url, admin_token)
        return StackNamespaces({ns["name"]: ns for ns in body["namespaces"]})
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            why = "refused the ADMIN_TOKEN given" if admin_token else "needs the admin token: set ADMIN_TOKEN"
            return StackNamespaces(problem=f"{url} answered {exc.code} ({why})")
        return StackNamespaces(problem=f"{url} answered {exc.code}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return StackNamespaces(problem=f"{url} could not be read ({exc})")


def choose_ttl(namespace: str, stack: StackNamespaces, asked: float | None) -> tuple[float, str]:
    """The TTL the figures of one namespace's run use, and a line saying where it came from."""
    known = stack.by_name.get(namespace, {}).get("cache_ttl_seconds")
    if asked is not None:
        if known is not None and float(known) != asked:
            return asked, (
                f"loadtest: {namespace}: --ttl {asked:g} s, but the stack's cache_ttl_seconds is {float(known):g} s;"
                " the per-TTL-window figures use --ttl as asked"
            )
        return asked, ""
    if known is not None:
        return float(known), f"loadtest: {namespace}: TTL {float(known):g} s (the stack's cache_ttl_seconds)"
    why = stack.problem or f"the stack has no namespace {namespace!r}"
    return DEFAULT_TTL, f"loadtest: {namespace}: TTL unknown, {why}; assuming {DEFAULT_TTL:g} s (pass --ttl to set it)"


ORIGIN_LABEL_PREFIX = "origin of "


def open_breakers(base_url: str, namespaces: list[str]) -> tuple[list[str], str]:
    """Breakers /status.json shows open for an origin of `namespaces`, and a warning when the
    state could not be read. The public page names an origin by the namespaces that use it
    ("origin of demo, demo-swr"), never by its address."""
    url = base_url.rstrip("/") + "/status.json"
    try:
        breakers = _get_json(url)["breakers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [], f"loadtest: could not read the breaker state from {url} ({exc}); starting anyway"
    wanted = set(namespaces)

    def serves_wanted(label: str) -> bool:
        users = label.removeprefix(ORIGIN_LABEL_PREFIX).split(", ") if label.startswith(ORIGIN_LABEL_PREFIX) else []
        return bool(wanted.intersection(users))

    return sorted(label for label, state in breakers.items() if state == "open" and serves_wanted(label)), ""


def check_stack(
    base_url: str, namespaces: list[str], asked_ttl: float | None, admin_token: str | None
) -> dict[str, float]:
    """Print where each namespace's TTL comes from, refuse (SystemExit, one line) when the stack
    lacks a namespace or a breaker of their origins is open, and return {namespace: TTL}."""
    stack = read_namespaces(base_url, admin_token)
    if stack.by_name and (missing := [n for n in namespaces if n not in stack.by_name]):
        raise SystemExit(
            f"loadtest: the stack at {base_url} has no namespace {', '.join(missing)}"
            f" (it has {', '.join(sorted(stack.by_name))})"
        )
    opened, warning = open_breakers(base_url, namespaces)
    if opened:
        raise SystemExit(
            f"loadtest: the circuit breaker of the {'; '.join(opened)} is open, so a run would measure only the"
            " breaker: fix the origin and wait BREAKER_RESET_TIMEOUT_SECONDS (see /status.json), then retry"
        )
    if warning:
        print(warning)
    ttls: dict[str, float] = {}
    for namespace in namespaces:
        ttls[namespace], line = choose_ttl(namespace, stack, asked_ttl)
        if line:
            print(line)
    return ttls
