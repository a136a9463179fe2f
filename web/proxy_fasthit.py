"""The near-cache hit of a proxied GET or HEAD, answered before Flask (by the front door, web/front.py).

A warm proxied URL's answer needs no Redis once the near-cache holds it; what is left of its
cost is Flask's request context, the proxy hook and the response object (measured: 2 900 req/s
against 6 700 for a key-value hit answered by web/fasthit.py). ``ProxyFastHits`` answers, from
the raw request alone, the one case that is certainly a plain fresh hit, with the very status,
headers and metrics web/proxy.py gives it (tests/proxy/test_proxy_fasthit.py compares the two
byte for byte):

- ``GET`` or ``HEAD`` (no body) of a target under a proxy namespace's mount, valid as
  web/proxy_target.py validates it, within its header limits;
- no request field that changes the decision or the answer: Cache-Control, Pragma, a
  credential (Authorization, Cookie, Proxy-Authorization), a conditional (If-*), Range,
  Expect, or a request body -- the read path and httpcache treat each of them specially;
- the key the read path would read (the URL's primary key, or the variant its learnt Vary
  fields select) is in the near-cache and still a HIT there: until the value's XFetch moment,
  so an early refresh still happens through the normal path; a purge or write of the key drops
  it from every process's near-cache (shared/nearcache.py) and the next read goes to Flask;
- the entry is a stored 200 (not a vary marker) that ``httpcache.reuse.decide`` calls FRESH
  for this request (its Vary matched, no no-cache, fresh by its stored lifetime): ``plain_fresh``
  is decide's rule for a request without directives, with the stored response's part computed
  once per value (tests/proxy/test_proxy_fasthit.py checks the two agree).

Anything else goes to Flask untouched, and the lookup here is not counted, so Flask's read counts
once. An answer given here is counted as Flask counts it, and in ``herdless_front_hits_total``.
``WEB_FAST_PATH=false`` turns it off, with the key-value fast hits.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.datastructures import EnvironHeaders

from shared import metrics
from shared.httpcache.fields import Headers, header_list, replaced
from shared.httpcache.lifetime import Policy, StoredResponse
from shared.httpcache.status import cache_status, with_cache_fields
from shared.httpcache.vary import matches, vary_fields
from shared.namespaces import Namespace
from shared.nearcache import NearCache
from shared.protocol import AnswerOutcome
from shared.proxy_read import ProxyReadPath, bypass_reason
from shared.proxy_refresh import policy_of
from shared.proxy_store import Envelope
from shared.store import ReadResult
from web.fasthit import StartResponse
from web.proxy_target import TargetError, check_header_sizes, mount_of, parse_target, raw_target
from web.state import EXTENSION, WebState

# WSGI environ keys of the request fields after which only the Flask path may answer: each one
# changes the decision (cache directives, credentials, conditionals) or the answer (Range).
DECIDING_FIELDS = frozenset(
    {
        "HTTP_CACHE_CONTROL",
        "HTTP_PRAGMA",
        "HTTP_AUTHORIZATION",
        "HTTP_PROXY_AUTHORIZATION",
        "HTTP_COOKIE",
        "HTTP_RANGE",
        "HTTP_IF_RANGE",
        "HTTP_IF_NONE_MATCH",
        "HTTP_IF_MODIFIED_SINCE",
        "HTTP_IF_MATCH",
        "HTTP_IF_UNMODIFIED_SINCE",
        "HTTP_EXPECT",
        "HTTP_TRANSFER_ENCODING",
    }
)
# Prepared stored responses kept, each with the value it came from (so an id is never mistaken),
# at most this many and this many bytes (each holds its value and a copy of its body: a count
# alone would let 4096 responses of ORIGIN_MAX_BYTES hold gigabytes). A value over a sixteenth
# of the budget is prepared at every hit instead, as the Flask path decodes it.
PREPARED_RESPONSES = 4096
PREPARED_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class _Owned:
    """A proxy namespace, its policy and its metric children, resolved once."""

    ns: Namespace
    policy: Policy
    hit: Any
    duration: Any
    age: Any
    front: Any


@dataclass(frozen=True)
class Prepared:
    """A stored response decoded once per near-cache value, with what a plain request's decision
    needs of it computed once (its Cache-Control, Vary, freshness lifetime and initial age),
    not per request: parsing them was a third of a fast hit's cost."""

    namespace: str
    envelope: Envelope
    stored: StoredResponse
    lifetime: float
    no_cache: bool
    vary: tuple[str, ...] | None

    @classmethod
    def of(cls, namespace: str, envelope: Envelope, policy: Policy) -> Prepared:
        stored = envelope.stored_response()
        return cls(
            namespace, envelope, stored, stored.lifetime(policy), stored.cache_control.no_cache,
            vary_fields(stored.headers),
        )  # fmt: skip


class PreparedResponses:
    """Near-cache values prepared once per value object (a hit hands back the very bytes object
    the near-cache holds), bounded in count and bytes (each is charged its value and its body's
    copy); a value over a sixteenth of the byte budget is prepared anew at every hit."""

    def __init__(self, max_entries: int = PREPARED_RESPONSES, max_bytes: int = PREPARED_BYTES) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.bytes = 0
        self._by_id: OrderedDict[int, tuple[bytes, Prepared]] = OrderedDict()
        self._lock = threading.Lock()  # the threads of a gthread worker share it

    def __len__(self) -> int:
        return len(self._by_id)

    def of(self, namespace: str, policy: Policy, value: bytes | None) -> Prepared | None:
        """The prepared stored response of a value; None for a vary marker or a value that is not
        an envelope."""
        if value is None:
            return None
        cached = self._by_id.get(id(value))
        if cached is not None and cached[0] is value and cached[1].namespace == namespace:
            return cached[1]
        envelope = Envelope.decode(value)
        if envelope is None or envelope.is_marker:
            return None
        prepared = Prepared.of(namespace, envelope, policy)
        if 2 * len(value) > self.max_bytes // 16:
            return prepared
        with self._lock:
            replaced_entry = self._by_id.pop(id(value), None)
            if replaced_entry is not None:
                self.bytes -= 2 * len(replaced_entry[0])
            self._by_id[id(value)] = (value, prepared)
            self.bytes += 2 * len(value)
            while len(self._by_id) > self.max_entries or self.bytes > self.max_bytes:
                old, _ = self._by_id.popitem(last=False)[1]
                self.bytes -= 2 * len(old)
        return prepared


def plain_fresh(prepared: Prepared, request_headers: Headers, now_s: float) -> tuple[float, float] | None:
    """(age, ttl) when ``httpcache.reuse.decide`` calls the stored response FRESH for a GET or HEAD
    without Cache-Control or Pragma (then none of the request's directives applies), else None.
    The same rule as decide's, in its order: a Vary that does not match (or ``*``) is a miss, a
    response no-cache is validated, a positive remaining freshness is FRESH."""
    if prepared.vary is None or prepared.no_cache:
        return None
    if prepared.vary and not matches(prepared.vary, prepared.stored.selecting_headers, request_headers):
        return None
    age = prepared.stored.age(now_s)
    ttl = prepared.lifetime - age
    return (age, ttl) if ttl > 0 else None


class ProxyFastHits:
    """The near-cache hit's answer for a GET or HEAD under a proxy mount (web/front.py calls it)."""

    def __init__(self, app: Flask) -> None:
        state: WebState = app.extensions[EXTENSION]
        read_path = state.read_path
        near = read_path.near_cache
        self.read_path = read_path if isinstance(read_path, ProxyReadPath) else None
        self.near: NearCache[ReadResult] | None = near if isinstance(near, NearCache) else None
        # The same mounts, in the same order, as web/proxy.py's hook matches them.
        self.mounts = sorted(
            ((ns.proxy.mount, ns) for ns in state.namespaces.values() if ns.proxy is not None),
            key=lambda m: -len(m[0]),
        )
        self.enabled = (
            state.settings.web_fast_path and self.near is not None and self.read_path is not None and bool(self.mounts)
        )
        self.owned = {
            ns.name: _Owned(
                ns,
                policy_of(ns),
                metrics.REQUESTS.labels(ns.name, AnswerOutcome.HIT),
                metrics.REQUEST_DURATION.labels(ns.name),
                metrics.SERVED_AGE.labels(ns.name),
                metrics.FRONT_HITS.labels(ns.name),
            )
            for _, ns in self.mounts
        }
        self.near_hit = metrics.NEAR_CACHE.labels("hit")
        self.prepared = PreparedResponses()

    def answer(self, method: str, environ: dict[str, Any], start_response: StartResponse) -> list[bytes] | None:
        """The near-cache hit's answer to a GET or HEAD, or None: Flask answers it."""
        if not self.enabled:
            return None
        started = time.perf_counter()
        raw = raw_target(environ)
        if raw is None or not raw.startswith("/") or environ.get("SCRIPT_NAME"):
            return None
        ns = mount_of(raw, self.mounts)
        if ns is None:
            return None
        if not DECIDING_FIELDS.isdisjoint(environ) or environ.get("CONTENT_LENGTH") not in (None, "", "0"):
            return None
        try:
            target = parse_target(raw, ns).target
            headers = header_list(EnvironHeaders(environ).items())  # as Flask's request.headers gives them
            check_header_sizes(headers)
        except TargetError:
            return None  # the hook answers the refusal
        if bypass_reason(ns, headers) is not None:
            return None  # forwarded by the hook (and any rule it gains applies here at once)
        assert self.read_path is not None and self.near is not None
        fields = self.read_path.known_vary(ns, target)
        key = self.read_path.key_of(ns, target, headers, fields)
        hit = self.near.get(ns.name, key, count=False)
        if hit is None:
            return None
        owned = self.owned[ns.name]
        prepared = self.prepared.of(owned.ns.name, owned.policy, hit.entry.value)
        if prepared is None or prepared.envelope.status != 200:
            return None  # a vary marker (the read path learns the URL's Vary), another status, an odd entry
        now_s = hit.redis_now_ms / 1000
        fresh = plain_fresh(prepared, headers, now_s)
        if fresh is None:
            return None  # stale, to revalidate, a Vary mismatch: the read path decides and counts
        age, ttl = fresh
        self.near_hit.inc()
        envelope = prepared.envelope
        out = with_cache_fields(envelope.headers, age, cache_status(hit=True, ttl=ttl))
        # What web/proxy.py's response object sends: X-Cache last, then Content-Length framing the
        # body (where the origin's stood, else appended), for a HEAD too.
        out = replaced((*out, ("X-Cache", "HIT")), "Content-Length", str(len(envelope.body)))
        owned.age.observe(max(0.0, prepared.stored.age(now_s)))
        owned.hit.inc()
        owned.front.inc()
        start_response("200 OK", list(out))
        owned.duration.observe(time.perf_counter() - started)
        return [b"" if method == "HEAD" else envelope.body]
