"""The read path of proxied URLs (web tier): find the stored response a GET selects, decide with
RFC 9111 whether it may answer, and wait for a refresh when it may not.

A proxied URL is an ordinary key (shared/proxy_store.py), so ``ReadPath.read`` does the work:
the near-cache, the one READ round trip, the lease and the queued refresh, the cold wait that
coalesces a herd on one origin call across every web node. Around it:

- the key: the URL's primary key, or its variant's when this process has learnt (from the
  primary's vary marker) which request headers select the response; a marker read on the way
  is followed to the variant (one more read, once per URL and process);
- the decision: ``httpcache.reuse.decide`` on the stored response at the Redis clock. FRESH and
  STALE answer at once (a stale read has already queued its refresh, on a worker: no client
  waits on the origin). REVALIDATE and FETCH (the response says no-cache, the request says
  no-cache, max-age, min-fresh, or the response is stale past what may be served) wait for a
  refresh that *starts after this read* (``refresh_and_wait``): the read's own, or one queued
  or running already — the lease still lets one refresh per key through, so a herd of
  ``no-cache`` readers costs one origin call too; the worker's call is conditional when the
  stored response has validators, and a 304 refreshes it without a body;
- a read that waited for a cold key's refresh answers with what that refresh fetched: it is
  the origin's answer to this very request (``Cache-Status: fwd=uri-miss``).

The request a refresh replays is the reader's (forwardable headers only), saved when its read
wins the lease (``recording_sender``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared import answers
from shared.answers import Answer, Refused, Served, Unstored
from shared.coldwait import TooManyWaiters, WaitHandle
from shared.httpcache.cachecontrol import request_cache_control
from shared.httpcache.conditional import CONDITIONAL_FIELDS
from shared.httpcache.fields import Headers, has, strip_hop_by_hop, without
from shared.httpcache.lifetime import Policy
from shared.httpcache.reuse import Forward, Reuse, ReuseDecision, decide, may_serve_on_error
from shared.httpcache.vary import matches, variant_key, vary_fields
from shared.namespaces import Namespace
from shared.protocol import AnswerOutcome, LeaseState, ReadyStatus, RefreshReason
from shared.proxy_config import CREDENTIAL_HEADERS
from shared.proxy_origin import TRANSPORT_FIELDS
from shared.proxy_refresh import policy_of
from shared.proxy_store import Envelope, PendingRequests, ProxyRequest, ProxyStore, credentials_of, proxy_key
from shared.readpath import ReadPath, SendRefresh
from shared.store import new_token
from shared.tasks import RefreshRequest

# Request fields a refresh never replays: the cache answers them itself (conditionals, cache
# directives) or the transport sets them.
# Request fields an origin may build its answer from (absolute links, redirects, routing, the
# method) without naming them in Vary: replayed, one client's value would be stored and served
# to every other (web cache poisoning). A cached read never sends them; a forwarded one does.
UNKEYED_OVERRIDES = (
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-forwarded-for",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
)
NOT_REPLAYED = (
    *CONDITIONAL_FIELDS,
    *TRANSPORT_FIELDS,
    *UNKEYED_OVERRIDES,
    "cache-control",
    "pragma",
    "range",
    "content-type",
)
# URLs whose Vary fields a process remembers (learnt from their primary keys' markers).
VARY_MEMO_ENTRIES = 100_000
# Decoded envelopes kept (each with the value it came from, so an id is never mistaken), at
# most this many and this many bytes: each holds its value and its body (a copy), so a count
# alone let 4096 responses of ORIGIN_MAX_BYTES hold gigabytes. A value over a sixteenth of the
# budget is decoded at every read instead (its head is small: the cost is the body's copy).
DECODED_ENVELOPES = 4096
DECODED_ENVELOPE_BYTES = 32 * 1024 * 1024
# Reads of one request at most: primary, its variant, and one re-keying when a variant's Vary changed.
MAX_HOPS = 3


@dataclass(frozen=True)
class ProxyAnswer:
    """What a proxied GET is answered with: the stored (or just fetched) response and how."""

    envelope: Envelope
    decision: ReuseDecision | None  # None: the origin's answer to this request (it waited for it)
    outcome: AnswerOutcome
    now_s: float
    stored: bool = True  # False: handed over by the refresh, stored nowhere
    forward: Forward | None = None


@dataclass(frozen=True)
class ForwardInstead:
    """The answer a refresh handed over was fetched for another reader and may not answer this
    one (private, it sets a cookie, or another variant of a Vary): the web tier forwards the
    request itself, as it forwards one that bypasses the cache."""


FORWARD_INSTEAD = ForwardInstead()


def bypass_reason(ns: Namespace, headers: Headers) -> str | None:
    """Why a GET or HEAD is sent to the origin by the web tier and never answered from (or
    stored in) the cache, or None: it carries a credential the namespace does not forward
    (a refresh could not replay it, and no other client's response may answer it), or it says
    no-store. A Range request is answered like any GET (its refresh replays it without the
    Range: the complete response is stored) and the web tier cuts the range from the stored
    response (httpcache.ranges)."""
    assert ns.proxy is not None
    for name in CREDENTIAL_HEADERS:
        if has(headers, name) and name not in ns.proxy.forward_headers:
            return "credentials"
    if request_cache_control(headers).no_store:
        return "no_store"
    return None


def replay_headers(ns: Namespace, headers: Headers) -> Headers:
    """The request fields a background refresh may send on this reader's behalf."""
    assert ns.proxy is not None
    kept = without(strip_hop_by_hop(headers), NOT_REPLAYED)
    forward = ns.proxy.forward_headers
    return tuple((n, v) for n, v in kept if n.lower() not in CREDENTIAL_HEADERS or n.lower() in forward)


class ProxyReadPath(ReadPath):
    """ReadPath with the proxy namespaces' GET on top (`proxy_get`)."""

    def __init__(self, *args: Any, pending: PendingRequests, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending = pending
        self.proxies = ProxyStore(self.store)
        self._vary: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()
        self._envelopes: OrderedDict[int, tuple[bytes, Envelope]] = OrderedDict()
        self._envelope_bytes = 0
        self._envelopes_lock = threading.Lock()

    def _learn_vary(self, ns: Namespace, target: str, fields: tuple[str, ...]) -> None:
        self._vary[(ns.name, target)] = fields
        self._vary.move_to_end((ns.name, target))
        while len(self._vary) > VARY_MEMO_ENTRIES:
            self._vary.popitem(last=False)

    def known_vary(self, ns: Namespace, target: str) -> tuple[str, ...] | None:
        """The Vary fields this process learnt for a URL (None: read its primary key)."""
        return self._vary.get((ns.name, target))

    def key_of(self, ns: Namespace, target: str, headers: Headers, fields: tuple[str, ...] | None) -> str:
        return proxy_key(target, variant_key(headers, fields) if fields else None, credentials_of(ns, headers))

    def proxy_get(
        self, ns: Namespace, target: str, method: str, headers: Headers
    ) -> ProxyAnswer | Refused | ForwardInstead:
        """Answer a GET or HEAD of `target` (validated, cacheable: see bypass_reason)."""
        policy = policy_of(ns)
        only_if_cached = request_cache_control(headers).only_if_cached
        replayed = replay_headers(ns, headers)
        fields = self._vary.get((ns.name, target))
        reader = new_token()  # names this read in the request a refresh replays for it
        fetched_at: int | None = None
        for _ in range(MAX_HOPS):
            key = self.key_of(ns, target, headers, fields)
            # Held while this read may enqueue the key's refresh (its own, or a revalidation).
            with self.pending.held(ns.name, key, ProxyRequest(target, replayed, fields or (), reader)):
                result = self._answer_key(ns, key, method, headers, fields, only_if_cached, policy, reader, fetched_at)
            if isinstance(result, tuple):
                fields, fetched_at = result
                self._learn_vary(ns, target, fields)
                continue
            return result
        return answers.Refused(502, "vary_loop", "the origin keeps changing what this URL varies on")

    def _answer_key(
        self, ns: Namespace, key: str, method: str, headers: Headers, fields: tuple[str, ...] | None,
        only_if_cached: bool, policy: Policy, reader: str, fetched_at: int | None,
    ) -> ProxyAnswer | Refused | ForwardInstead | tuple[tuple[str, ...], int | None]:  # fmt: skip
        """The answer from one key, or (fields, fetched_at) when the URL must be read again under
        those Vary fields (a marker, or a variant whose Vary changed); `fetched_at` is the start
        (Redis clock, ms) of the refresh this read waited for when it wrote the marker: the
        variant that refresh wrote beside it is the origin's answer to this read."""
        answer = self._peek_served(ns, key) if only_if_cached else self.read(ns, key)
        if answer is None:
            return _gateway_timeout()
        if isinstance(answer, Refused):
            return answer
        if isinstance(answer, Unstored):
            return self._handed_over(answer, Forward.URI_MISS, reader, headers)
        envelope = self._decoded(answer.result.value)
        if envelope is None:
            return answers.Refused(502, "invalid_entry", "the stored entry is not a proxied response")
        if envelope.is_marker:
            if fields == envelope.vary:
                return answers.Refused(502, "invalid_entry", "a variant key holds a vary marker")
            return envelope.vary, answer.result.at_ms if answer.outcome is AnswerOutcome.MISS else None
        now_s = answer.now_ms / 1000
        stored = envelope.stored_response()
        if answer.outcome is AnswerOutcome.MISS or (fetched_at is not None and answer.result.at_ms == fetched_at):
            # This read waited for the refresh that fetched it: the origin's answer to it.
            return ProxyAnswer(envelope, None, AnswerOutcome.MISS, now_s, forward=Forward.URI_MISS)
        decision = decide(method, headers, stored, now_s, policy)
        if decision.forward is Forward.VARY_MISS:
            own = vary_fields(stored.headers)
            if own and own != fields:  # the origin changed what the URL varies on
                return own, None
            return ProxyAnswer(envelope, decision, AnswerOutcome.MISS, now_s)  # unreachable in practice
        if decision.from_cache:
            outcome = AnswerOutcome.HIT if decision.action is Reuse.FRESH else AnswerOutcome.STALE
            return ProxyAnswer(envelope, decision, outcome, now_s)
        if decision.action is Reuse.GATEWAY_TIMEOUT:
            return _gateway_timeout()
        return self._validated(ns, key, answer.now_ms, decision, headers, policy, reader)

    def _decoded(self, value: bytes | None) -> Envelope | None:
        """The envelope of a stored value, decoded once per value object: a near-cache hit hands
        back the very bytes object it holds, so a hot URL's head is parsed once, not per read."""
        if value is None:
            return None
        cached = self._envelopes.get(id(value))
        if cached is not None and cached[0] is value:
            return cached[1]
        envelope = Envelope.decode(value)
        if envelope is None or 2 * len(value) > DECODED_ENVELOPE_BYTES // 16:
            return envelope
        with self._envelopes_lock:  # the threads of a gthread worker share it
            replaced = self._envelopes.pop(id(value), None)
            if replaced is not None:
                self._envelope_bytes -= 2 * len(replaced[0])
            self._envelopes[id(value)] = (value, envelope)
            self._envelope_bytes += 2 * len(value)
            while len(self._envelopes) > DECODED_ENVELOPES or self._envelope_bytes > DECODED_ENVELOPE_BYTES:
                old, _ = self._envelopes.popitem(last=False)[1]
                self._envelope_bytes -= 2 * len(old)
        return envelope

    def _peek_served(self, ns: Namespace, key: str) -> Served | None:
        r = self.proxies.peek(ns, key)
        return Served(r, AnswerOutcome.HIT, r.now_ms) if r.has_value else None

    def _handed_over(
        self, answer: Unstored, forward: Forward, reader: str, headers: Headers
    ) -> ProxyAnswer | Refused | ForwardInstead:
        envelope = Envelope.decode(answer.body)
        if envelope is None:
            return answers.Refused(502, "invalid_entry", "the origin's answer could not be handed over")
        if envelope.reader != reader:  # fetched for another reader of the key
            selected = matches(vary_fields(envelope.headers), envelope.selecting_headers, headers)
            if envelope.personal or not selected:
                return FORWARD_INSTEAD
        return ProxyAnswer(envelope, None, AnswerOutcome.MISS, time.time(), stored=False, forward=forward)

    def _validated(
        self, ns: Namespace, key: str, since_ms: int, decision: ReuseDecision, headers: Headers, policy: Policy,
        reader: str,
    ) -> ProxyAnswer | Refused | ForwardInstead:  # fmt: skip
        answer = self.refresh_and_wait(ns, key, since_ms)
        if answer is ORIGIN_FAILED:
            # The refresh failed: a stored response its stale-if-error allows answers instead.
            r = self.proxies.peek(ns, key)
            envelope = Envelope.decode(r.value) if r.has_value else None
            if envelope is not None and not envelope.is_marker:
                now_s = r.now_ms / 1000
                if may_serve_on_error(headers, envelope.stored_response(), now_s, policy):
                    stale = decide("GET", (), envelope.stored_response(), now_s, policy)
                    return ProxyAnswer(envelope, stale, AnswerOutcome.STALE, now_s)
        if isinstance(answer, Refused):
            return answer
        forward = decision.forward or Forward.STALE
        if isinstance(answer, Unstored):
            return self._handed_over(answer, forward, reader, headers)
        envelope = Envelope.decode(answer.result.value)
        if envelope is None or envelope.is_marker:
            return answers.Refused(502, "invalid_entry", "the revalidated entry is not a proxied response")
        return ProxyAnswer(envelope, None, AnswerOutcome.MISS, answer.now_ms / 1000, forward=forward)

    def refresh_and_wait(self, ns: Namespace, key: str, since_ms: int) -> Answer:
        """Wait for a refresh of the key that started after `since_ms` (Redis clock): queue one
        unless one is queued or running (the lease decides, as for any read), and queue another
        if the one found had started before. Bounded by COLD_WAIT_TIMEOUT_SECONDS."""
        deadline = time.monotonic() + self.settings.cold_wait_timeout_seconds
        try:
            with self._waiter.join(ns.name, key, None) as handle:
                return self._await_refresh(ns, key, since_ms, handle, deadline)
        except TooManyWaiters:  # raised by join alone: this process has too many requests waiting
            return answers.TOO_MANY_WAITERS

    def _await_refresh(self, ns: Namespace, key: str, since_ms: int, handle: WaitHandle, deadline: float) -> Answer:
        handle.mark()
        refusal = self._take_and_enqueue(ns, key)
        while True:
            if refusal is not None:
                return refusal
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return answers.cold_wait_timed_out(self.settings.cold_wait_timeout_seconds)
            status = handle.wait(remaining)
            if handle.handed_over is not None:
                return Unstored(handle.handed_over.body, handle.handed_over.content_type)
            handle.mark()
            r = self.proxies.peek(ns, key)
            if r.has_value and (r.at_ms or 0) > since_ms:
                return Served(r, AnswerOutcome.MISS, r.now_ms)
            if status is ReadyStatus.ERROR:
                return ORIGIN_FAILED
            # Published for a refresh that started before this read, or nothing heard: go again.
            refusal = self._take_and_enqueue(ns, key)

    def _take_and_enqueue(self, ns: Namespace, key: str) -> Refused | None:
        token = new_token()
        if not self.store.take_lease(ns, key, token):
            if self.store.inspect(ns, key).lease is LeaseState.COOLDOWN:
                return ORIGIN_FAILED  # the last refresh failed: none until the cooldown ends
            return None  # a refresh is queued or running: its publish wakes us
        try:
            self._enqueue(ns, key, token, RefreshReason.MISS, self.store.now_ms())
        except answers.QueueRefused:
            return answers.QUEUE_FULL
        except answers.BrokerUnavailable:
            return answers.NOT_ENQUEUED
        return None

    # -- admin --------------------------------------------------------------------------------

    def url_keys(self, ns: Namespace, target: str) -> list[str]:
        """Every key stored for a URL: its primary and each variant."""
        primary = proxy_key(target)
        return [primary, *self.proxies.variants(ns, primary)]

    def purge_url(self, ns: Namespace, target: str) -> int:
        """Hard-purge every stored response of a URL (all its variants); the number of keys that held one."""
        keys = self.url_keys(ns, target)
        purged = sum(self.purge(ns, key) for key in keys)
        self.proxies.forget_variants(ns, keys[0])
        return purged

    def warm_urls(self, ns: Namespace, targets: list[str]) -> answers.WarmResult:
        """Warm the primary keys of `targets` (a refresh replays each without request headers)."""
        keys = {proxy_key(t): t for t in targets}
        holds = [self.pending.held(ns.name, key, ProxyRequest(t)) for key, t in keys.items()]
        for hold in holds:
            hold.__enter__()
        try:
            return self.warm(ns, list(keys))
        finally:
            for hold in holds:
                hold.__exit__(None, None, None)


# A validation that failed (the origin erred, or the key cools down after it did): 504 unless a
# stored response may be served on error.
ORIGIN_FAILED = answers.Refused(504, "origin_unavailable", "the stored response could not be validated")


def _gateway_timeout() -> Refused:
    return answers.Refused(504, "not_cached", "only-if-cached: no stored response may answer this request")


def task_label(request: RefreshRequest, pending: PendingRequests) -> str | None:
    """What Flower shows for a proxied key's refresh: its namespace and URL path (not the query,
    which may carry a client's token), since the key itself is a hash."""
    held = pending.get(request.namespace, request.key)
    if held is None:
        return None
    path, sep, _ = held.target.partition("?")
    return f"{request.namespace} GET {path or '/'}{'?…' if sep else ''}"


def recording_sender(
    send: Callable[[RefreshRequest], None], namespaces: dict[str, Namespace], pending: PendingRequests,
    proxies: Callable[[], ProxyStore],
) -> SendRefresh:  # fmt: skip
    """Wrap the queue's send so that a proxied key's refresh finds the request to replay: the
    reader's request held for the key is saved (and a variant listed under its URL) first."""

    def send_recorded(request: RefreshRequest) -> None:
        ns = namespaces.get(request.namespace)
        if ns is not None and ns.is_proxy:
            held = pending.get(request.namespace, request.key)
            if held is not None:
                store = proxies()
                store.save_request(ns, request.key, held)
                primary = proxy_key(held.target)
                if primary != request.key:
                    store.add_variant(ns, primary, request.key)
        send(request)

    return send_recorded
