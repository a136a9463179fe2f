"""The near-cache hit, answered before Flask's routing (by the front door, web/front.py).

A warm key's read is the one request herdless answers most, and with the near-cache it needs
no Redis: what is left of its cost is the framework. ``FastHits`` recognises, from the raw
request URI alone, the one request it certainly owns -- ``GET /v1/cache/<namespace>/<key>``,
exactly two segments, no query string, a configured namespace whose reads go through the
near-cache -- and answers it from the process's near-cache when the value is there and still
a HIT, with the very headers, status line and metrics the Flask read route gives the same hit
(``web/routes.py`` ``cache_headers``; tests/test_fasthit.py compares the two byte for byte).
Anything else, and any hit it does not answer itself (a cached 404, an odd entry), goes to
Flask untouched: the lookup here does not count, so Flask's own read counts once.

The front claims nothing when another route could answer a ``/v1/cache/`` GET (a rule of
another blueprint under that prefix, such as a proxy namespace mounted there): then every
request goes to Flask, which decides. ``WEB_FAST_PATH=false`` turns the fast hits off.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask

from shared import metrics, rates
from shared.answers import Answer, Served, near_answer
from shared.keys import InvalidKey
from shared.namespaces import Namespace
from shared.nearcache import NearCache
from shared.protocol import AnswerOutcome, Strategy
from shared.store import ReadResult
from web.cache_path import PREFIX, percent_decode
from web.http import cache_headers
from web.routes import etag_matches
from web.state import EXTENSION, WebState

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# A key segment that is its own decoding: printable ASCII but "%" and "/" (no control character,
# valid UTF-8); anything else is percent-decoded as the route does.
_PLAIN_SEGMENT = re.compile(r"[!-$&-.0-~]+")
# The read route's rule, the one GET rule under /v1/cache/ the fast path may stand in for.
READ_ENDPOINT = "herdless.read"


@dataclass(frozen=True)
class _Owned:
    """A namespace whose hits the fast path answers, with its metric children resolved once."""

    ns: Namespace
    hit: Any
    not_modified: Any
    duration: Any
    age: Any
    front: Any
    joined: Any
    reads: Any


def owns_cache_gets(app: Flask) -> bool:
    """True when the read route is the only GET rule whose path lies under /v1/cache/."""
    others = [
        rule
        for rule in app.url_map.iter_rules()
        if "GET" in (rule.methods or ()) and rule.rule.startswith(PREFIX.rstrip("/")) and rule.endpoint != READ_ENDPOINT
    ]
    return not others


def read_target(environ: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, key) of a ``/v1/cache/<namespace>/<key>`` request, from its raw URI: exactly
    two segments, no query string, the key decoded as the route decodes it; the namespace is not
    checked. None: any other path, or one the route will refuse (400)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if environ.get("SCRIPT_NAME") or not isinstance(raw, str) or not raw.startswith(PREFIX):
        return None
    if "?" in raw or "#" in raw:
        return None
    parts = raw[len(PREFIX) :].split("/")
    if len(parts) != 2:
        return None
    segment = parts[1]
    if _PLAIN_SEGMENT.fullmatch(segment):
        return parts[0], segment
    try:
        key = percent_decode(segment).decode("utf-8")
    except (InvalidKey, UnicodeDecodeError):
        return None  # the route answers 400
    return (parts[0], key) if key else None


def _renders(r: ReadResult) -> bool:
    """Is `r` a stored positive value, the one answer the front door renders itself? (A cached
    404 or an odd entry is the route's.)"""
    return not r.negative and bool(r.content_type) and r.value is not None


class FastHits:
    """The near-cache hit's answer for a read target (web/front.py calls it first)."""

    def __init__(self, app: Flask) -> None:
        state: WebState = app.extensions[EXTENSION]
        near = state.read_path.near_cache
        self.near: NearCache[ReadResult] | None = near if isinstance(near, NearCache) else None
        self.enabled = state.settings.web_fast_path and self.near is not None
        self.owned = {
            name: _Owned(
                ns,
                metrics.REQUESTS.labels(name, AnswerOutcome.HIT),
                metrics.REQUESTS.labels(name, "not_modified"),
                metrics.REQUEST_DURATION.labels(name),
                metrics.SERVED_AGE.labels(name),
                metrics.FRONT_HITS.labels(name),
                metrics.FRONT_JOINED.labels(name),
                metrics.FRONT_READS.labels(name),
            )
            for name, ns in state.namespaces.items()
            # A naive read never looks at the near-cache; a proxy namespace's keys are its mount's.
            if ns.strategy is not Strategy.NAIVE and not ns.is_proxy
        }
        self.near_hit = metrics.NEAR_CACHE.labels("hit")

    def joins(self, ns_name: str) -> bool:
        """Does the front door join cold waits of this namespace itself (see `answered`)?"""
        return self.enabled and ns_name in self.owned

    def answered(
        self,
        target: tuple[str, str],
        answer: Answer,
        environ: dict[str, Any],
        start_response: StartResponse,
        started: float,
        *,
        joined: bool = True,
    ) -> list[bytes] | None:
        """The bytes the read route gives `answer`, a read of `target` the front door made (a
        reader joining a cold wait of its process; `joined` False: an admitted read of its own),
        when it is a stored positive value; else None, and the route renders it. In a cold herd
        all but one reader of each process are such joiners: they wait and are answered without
        Flask (its request context, routing and response object were a quarter of a web
        process's CPU in a 1 000-client herd)."""
        owned = self.owned.get(target[0])
        if owned is None or not isinstance(answer, Served):
            return None
        r = answer.result
        if not _renders(r):
            return None
        (owned.joined if joined else owned.reads).inc()
        served = metrics.REQUESTS.labels(target[0], answer.outcome)
        return self._send(owned, target, r, answer.outcome, answer.now_ms, served, environ, start_response, started)

    def answer(
        self, target: tuple[str, str], environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes] | None:
        """The near-cache hit's answer to a GET of `target`, or None: no hit to answer here."""
        started = time.perf_counter()
        owned = self.owned.get(target[0])
        if owned is None or self.near is None or not self.enabled:
            return None
        # A near-cache entry was put by a read of a validated key: a hit proves the key valid.
        hit = self.near.get(target[0], target[1], count=False)
        if hit is None:
            return None
        r = hit.entry
        if not _renders(r):
            return None  # answered by the route, which counts the lookup itself
        self.near_hit.inc()
        owned.front.inc()
        answer = near_answer(target[0], hit)  # HIT, or EARLY / STALE while its refresh is under way
        served = (
            owned.hit if answer.outcome is AnswerOutcome.HIT else metrics.REQUESTS.labels(target[0], answer.outcome)
        )
        return self._send(owned, target, r, answer.outcome, answer.now_ms, served, environ, start_response, started)

    @staticmethod
    def _send(
        owned: _Owned,
        target: tuple[str, str],
        r: ReadResult,
        outcome: str,
        now: int,
        served: Any,
        environ: dict[str, Any],
        start_response: StartResponse,
        started: float,
    ) -> list[bytes]:
        """The route's answer to a stored positive value: 200 with the value (counted in `served`),
        or 304 to a matching If-None-Match; the route's headers, metrics and status-page count."""
        value = r.value or b""  # the callers pass what _renders accepts only
        rates.RECORDER.note_key(target[0], target[1])  # for the status page's ideal origin calls
        headers = list(cache_headers(owned.ns, r, outcome, now).items())
        if r.at_ms is not None:
            owned.age.observe(max(0, now - r.at_ms) / 1000)
        if r.etag and etag_matches(environ.get("HTTP_IF_NONE_MATCH"), r.etag):
            owned.not_modified.inc()
            start_response("304 NOT MODIFIED", headers)
            body = b""
        else:
            served.inc()
            headers.append(("Content-Type", r.content_type))
            headers.append(("Content-Length", str(len(value))))
            start_response("200 OK", headers)
            body = value
        owned.duration.observe(time.perf_counter() - started)
        return [body]
