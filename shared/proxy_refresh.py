"""The refresh of a proxied URL (worker tier): replay the stored request, then store, revalidate or hand over.

``Refresher`` (shared/refresher.py) claims the key, takes the origin slot and keeps the lease
renewed exactly as for a key-value namespace, then hands a proxy namespace's run here:

1. the request to replay is the one the winning read saved (``ProxyStore.load_request``), else
   what the stored entry says (its target and selecting headers); only forwardable headers are
   in either (no credential the namespace was not told to forward);
2. with a stored response holding validators the call is conditional
   (``httpcache.conditional.revalidation_headers``); a 304 that validates it merges its headers
   into the stored ones (§4.3.4) and the stored body starts a new lifetime;
3. a 500, 502, 503 or 504 (or no answer) while a stored response may still be served on error
   (stale-if-error) records a failure: the stale response stays and is served;
4. any other answer is stored when ``httpcache.storage.storable`` allows, with the lifetimes
   RFC 9111 gives it (soft = its freshness; kept past it for its stale windows and for
   revalidation), else handed to the waiting readers and not stored.

Vary: a primary key's answer with a Vary is stored under its variant key (the refresh takes
that key's lease, writes under its fences and lets it go) and the primary key gets a vary
marker naming the fields, in that order, so a reader woken by the marker finds its variant.
Every write is FENCED_WRITE (lease, start order, purges): a proxied URL is just a key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from shared import metrics
from shared.breaker import BreakerOpen, OriginBreaker
from shared.freshness import Lifetimes
from shared.httpcache.conditional import is_not_modified_for, merge_not_modified, revalidation_headers
from shared.httpcache.fields import has
from shared.httpcache.lifetime import Policy, StoredResponse
from shared.httpcache.reuse import error_window, fresh_until, has_validators, may_serve_on_error, serve_stale_window
from shared.httpcache.storage import NotStored, storable, stored_headers
from shared.httpcache.vary import selecting_headers, variant_key, vary_fields
from shared.namespaces import Namespace
from shared.origin import OriginError, OriginResponse
from shared.origin_adapters import BuiltOnce
from shared.protocol import FailureCode, RefreshOutcome
from shared.proxy_origin import ProxiedResponse, ProxyOrigin
from shared.proxy_store import (
    PROXIED_TYPE,
    VARY_MARKER_SECONDS,
    Envelope,
    ProxyRequest,
    ProxyStore,
    credentials_of,
    proxy_key,
)
from shared.refreshlog import RefreshReport
from shared.settings import Settings
from shared.store import CacheStore, Fence, WriteResult, new_token
from shared.tasks import RefreshRequest

# How long past its freshness a response with validators is kept for revalidation (a 304 then
# costs the origin no body); one without validators is kept only long enough for its waiters.
KEEP_FOR_REVALIDATION_SECONDS = 3600.0
KEEP_FOR_WAITERS_SECONDS = 10.0
# The engine's freshness of a response stale on arrival (max-age=0, an Expires in the past,
# no-cache): long enough for the readers woken by its write to read it without their re-read
# counting it STALE and queueing one more refresh. Whether it may answer anyone else is
# httpcache's decision, at every read, whatever the engine's soft moment.
MIN_SOFT_SECONDS = 2.0
# Statuses that count as the origin failing (stale-if-error serves a stored response instead).
ERROR_STATUSES = frozenset({500, 502, 503, 504})


def policy_of(ns: Namespace) -> Policy:
    assert ns.proxy is not None
    return Policy(default_ttl=ns.proxy.default_ttl_seconds, stale_ttl=ns.stale_ttl_seconds)


def lifetimes_of(stored: StoredResponse, policy: Policy, now_s: float) -> Lifetimes:
    """The engine's three lifetimes (ms from now) of a response to store: fresh until RFC 9111
    says; then kept for its stale window (stale-while-revalidate, stale_ttl_seconds) or for
    revalidation, whichever is longer; stale-if-error on top while the origin fails."""
    cc = stored.cache_control
    fresh_s = max(MIN_SOFT_SECONDS, fresh_until(stored, policy) - now_s)
    keep_s = KEEP_FOR_REVALIDATION_SECONDS if has_validators(stored) else KEEP_FOR_WAITERS_SECONDS
    stale_s = max(serve_stale_window(cc, policy), keep_s)
    return Lifetimes(int(fresh_s * 1000), int(stale_s * 1000), int(error_window(cc, None, policy) * 1000))


class ProxyRefresher:
    """The proxy half of one worker process's Refresher."""

    def __init__(self, settings: Settings, store: CacheStore, breaker: Callable[[Namespace], OriginBreaker]) -> None:
        self.store = store
        self.breaker = breaker
        self.proxies = ProxyStore(store)
        self._origins: BuiltOnce[ProxyOrigin] = BuiltOnce()
        self._max_bytes = settings.origin_max_bytes
        self._connections = max(8, settings.worker_concurrency)

    def origin(self, ns: Namespace) -> ProxyOrigin:
        return self._origins.get(ns.name, lambda: ProxyOrigin(ns, self._max_bytes, self._connections))

    def call_and_write(
        self, ns: Namespace, req: RefreshRequest, run_token: str, lost: threading.Event
    ) -> RefreshReport:
        store, key = self.store, req.key
        if lost.is_set():
            return RefreshReport(RefreshOutcome.LOST_LEASE)
        stored = self.proxies.stored(ns, key)
        if stored is not None and stored.is_marker:
            stored = None
        request = self.proxies.load_request(ns, key)
        if request is None and stored is not None:
            request = ProxyRequest(stored.target, stored.selecting_headers, vary_fields(stored.headers) or ())
        if request is None:
            store.record_failure(ns, key, run_token, origin_called=False, reason=FailureCode.ORIGIN_ERROR)
            return RefreshReport(RefreshOutcome.ORIGIN_ERROR, FailureCode.ORIGIN_ERROR, "no request to replay")
        previous = stored.stored_response() if stored is not None else None
        sent = request.headers
        if previous is not None and has_validators(previous):
            sent = revalidation_headers(request.headers, previous)
        origin = self.origin(ns)
        started_ms = store.now_ms()
        t0 = time.perf_counter()
        deadline = time.monotonic() + ns.origin_timeout_seconds

        def call() -> ProxiedResponse:
            return origin.request("GET", request.target, sent, deadline=deadline)

        policy = policy_of(ns)
        try:
            # Only an origin that does not answer counts against the breaker: a 5xx is the
            # origin's answer for one URL, and a client's choice of URLs must not open the
            # breaker for everyone (docs/design.md).
            response, _ = self.breaker(ns).call_timed(call)
            if response.status in ERROR_STATUSES:
                raise UpstreamError(response)
        except BreakerOpen as exc:
            store.record_failure(
                ns, key, run_token, min_cooldown_ms=exc.retry_after_ms, origin_called=False,
                reason=FailureCode.BREAKER_OPEN,
            )  # fmt: skip
            return RefreshReport(RefreshOutcome.BREAKER_OPEN, FailureCode.BREAKER_OPEN, f"origin {ns.origin_name}")
        except UpstreamError as exc:
            metrics.ORIGIN_CALLS.labels(ns.name, "error").inc()
            metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
            now_s = store.now_ms() / 1000
            if previous is not None and may_serve_on_error(request.headers, previous, now_s, policy):
                store.record_failure(ns, key, run_token, reason=FailureCode.ORIGIN_ERROR)
                return RefreshReport(RefreshOutcome.ORIGIN_ERROR, FailureCode.ORIGIN_ERROR, f"origin {ns.origin_name}")
            response = exc.response  # no stale response to fall back on: the error is the answer
        except OriginError as exc:
            metrics.ORIGIN_CALLS.labels(ns.name, exc.outcome).inc()
            metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
            store.record_failure(ns, key, run_token, reason=exc.code)
            return RefreshReport(RefreshOutcome.ORIGIN_ERROR, exc.code, f"origin {ns.origin_name}: {exc}")
        else:
            metrics.ORIGIN_DURATION.labels(ns.name).observe(time.perf_counter() - t0)
            metrics.ORIGIN_CALLS.labels(ns.name, "not_modified" if response.status == 304 else "ok").inc()
        metrics.ORIGIN_BYTES.labels(ns.name).inc(len(response.body))
        elapsed_ms = int((time.perf_counter() - t0) * 1000)
        request_time, response_time = started_ms / 1000, (started_ms + elapsed_ms) / 1000
        fence = Fence(run_token, started_ms, started_ms)
        if response.status == 304 and previous is not None and stored is not None:
            if not is_not_modified_for(previous, response.headers):
                # A 304 for another representation: nothing to confirm; the next read refetches.
                result = store.drop_uncacheable(ns, key, fence, hand_over=None)
                return RefreshReport(result.status)
            merged = StoredResponse(
                previous.status, merge_not_modified(previous.headers, response.headers), request_time, response_time,
                "GET", previous.selecting_headers,
            )  # fmt: skip
            envelope = Envelope("response", request.target, merged.status, merged.headers, stored.body,
                                request_time, response_time, merged.selecting_headers)  # fmt: skip
            result = self._write(ns, key, fence, envelope, merged, policy)
            return RefreshReport(RefreshOutcome.REVALIDATED if result.written else result.status)
        return self._store_answer(ns, key, fence, request, response, request_time, response_time, policy)

    def _store_answer(
        self, ns: Namespace, key: str, fence: Fence, request: ProxyRequest, response: ProxiedResponse,
        request_time: float, response_time: float, policy: Policy,
    ) -> RefreshReport:  # fmt: skip
        store = self.store
        fields = vary_fields(response.headers)
        verdict = storable("GET", request.headers, response.status, response.headers)
        kept = stored_headers(response.headers)
        selecting = selecting_headers(request.headers, fields or ())
        envelope = Envelope("response", request.target, response.status, kept, response.body,
                            request_time, response_time, selecting)  # fmt: skip
        if not verdict.storable or fields is None or self._needs_credentials(ns, fields):
            metrics.PROXY_NOT_STORED.labels(ns.name, verdict.reason or "vary").inc()
            # Every reader of the key waited for it: a private answer, or one that sets a cookie,
            # is the replayed reader's alone; the others ask the origin for their own.
            personal = verdict.reason is NotStored.PRIVATE or has(kept, "set-cookie")
            handed = replace(envelope, reader=request.reader, personal=personal)
            result = store.drop_uncacheable(ns, key, fence, hand_over=_hand_over(handed))
            return RefreshReport(result.status)
        stored = envelope.stored_response()
        if fields and not request.vary:
            # A primary key's answer that varies: store it under its variant, then mark the primary.
            # The variant's key is the one a reader computes (with the forwarded credentials), and
            # it is listed under the URL's own primary, where a purge of the URL finds it.
            credentials = credentials_of(ns, request.headers)
            variant = proxy_key(request.target, variant_key(request.headers, fields), credentials)
            url = proxy_key(request.target)
            self._write_variant(ns, url, variant, fence, envelope, stored, policy, request, fields)
            marker = Envelope("vary", request.target, vary=fields)
            forever = Lifetimes(VARY_MARKER_SECONDS * 1000, 0, 0)
            result = store.fenced_write(
                ns, key, fence, value=marker.encode(), content_type=PROXIED_TYPE, lifetimes=forever
            )
            return RefreshReport(result.status)
        result = self._write(ns, key, fence, envelope, stored, policy)
        return RefreshReport(result.status)

    @staticmethod
    def _needs_credentials(ns: Namespace, fields: tuple[str, ...]) -> bool:
        """A response that varies on a credential the namespace does not forward: a refresh could
        not replay what selected it, so it is not stored."""
        assert ns.proxy is not None
        return any(f in ("authorization", "cookie") and f not in ns.proxy.forward_headers for f in fields)

    def _write(
        self, ns: Namespace, key: str, fence: Fence, envelope: Envelope, stored: StoredResponse, policy: Policy
    ) -> WriteResult:
        lifetimes = lifetimes_of(stored, policy, self.store.now_ms() / 1000)
        return self.store.fenced_write(
            ns, key, fence, value=envelope.encode(), content_type=PROXIED_TYPE, lifetimes=lifetimes
        )

    def _write_variant(
        self, ns: Namespace, primary: str, variant: str, fence: Fence, envelope: Envelope, stored: StoredResponse,
        policy: Policy, request: ProxyRequest, fields: tuple[str, ...],
    ) -> None:  # fmt: skip
        """Store the answer under its variant key, under that key's own lease (taken and let go
        here); a variant whose refresh is queued or running already is left to it."""
        token = new_token()
        self.proxies.add_variant(ns, primary, variant)
        self.proxies.save_request(ns, variant, ProxyRequest(request.target, request.headers, fields))
        if not self.store.take_lease(ns, variant, token):
            return
        try:
            self._write(ns, variant, Fence(token, fence.started_ms, fence.won_at_ms), envelope, stored, policy)
        finally:
            self.store.finish(ns, variant, token)


class UpstreamError(OriginError):
    """The origin answered 500, 502, 503 or 504: a failure for the breaker and stale-if-error,
    and the answer itself when no stored response may stand in for it."""

    def __init__(self, response: ProxiedResponse) -> None:
        super().__init__(f"origin answered {response.status}")
        self.response = response


def _hand_over(envelope: Envelope) -> OriginResponse:
    return OriginResponse(envelope.encode(), PROXIED_TYPE)
