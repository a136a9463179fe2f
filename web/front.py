"""The web tier's front door: a WSGI middleware before Flask that answers near-cache hits
(web/fasthit.py; proxied ones, web/proxy_fasthit.py) and refuses, cheaply and early, the reads
this process cannot serve in time.

Past its capacity a process that lets every request reach its routing spends nearly as much on a
refusal as on an answer, and the requests it works on wait behind each other until their clients
gave up. So admission happens here, before Flask, on the raw request URI, for reads
(``GET``/``HEAD`` of ``/v1/cache/<namespace>/<key>``):

- **Read here**: a ``GET`` it admits (below) of a namespace the near-cache serves is read by the
  front door itself, its key checked as the route checks it, and a stored value (a miss served
  after its wait, an early or stale value) is answered here with the route's bytes
  (``herdless_front_reads_total``); anything else is left to the route to render.
- **In flight**: the process's ``Admission`` (shared/admission.py: ``MAX_REQUESTS_IN_FLIGHT``
  its ceiling, adapted to the cold misses' waits) is taken here, for the whole request, instead
  of inside the read path. A read that would join waiters of the process already waiting for
  its key takes no slot, as before. A near-cache hit never gets here: it is answered first.
- **Cold waiters while the refresh tier is behind**: a read that would join a cold wait under
  way is refused ``503 too_many_waiters`` while the bound above has shrunk (cold waits run past
  their target) and the process holds as many cold waiters as that bound: it would hold its
  connection for a wait that is likely to time out. Its key's refresh is queued already.
- **Waited too long already**: under gevent a monitor greenlet measures how late the event loop
  runs a timer (``LoopLag``); every request read while the loop is that late has waited at
  least as long since its bytes arrived before herdless's code could run. While the lag exceeds
  ``SHED_AFTER_SECONDS`` reads that need Redis are refused at once: the process gets through its
  backlog instead of answering each request after its client's patience ran out. Past
  ``EARLY_HELD_AFTER_SECONDS`` the read path refreshes nothing early (``ReadPath.behind``): a
  value is answered until it expires, then refreshed once.

A refusal is the read route's own ``503 {"error": "overloaded", ...}`` with ``Retry-After: 1``,
its bytes built once by Flask at start-up, counted in ``herdless_refused_total`` and
``herdless_requests_total{outcome="error"}`` like the route's, and in
``herdless_front_refused_total{reason}`` (in_flight, lag, waiters). Everything else -- admin routes,
health, metrics, the status page -- passes untouched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from shared import metrics
from shared.answers import OVERLOADED, TOO_MANY_WAITERS, Refused
from shared.keys import InvalidKey, validate_key
from shared.protocol import AnswerOutcome, Refusal
from web.fasthit import FastHits, StartResponse, WSGIApp, owns_cache_gets, read_target
from web.http import refusal
from web.proxy_fasthit import ProxyFastHits
from web.state import ADMITTED, ANSWERED, EXTENSION, WebState

SHED_AFTER_SECONDS = 1.0  # a loop this late: reads needing Redis are refused
EARLY_HELD_AFTER_SECONDS = 0.5  # a loop this late: no early refresh (shared/readpath.py `behind`)
LAG_INTERVAL_SECONDS = 0.05  # how often the monitor's timer is due
LAG_DETAIL = "this process is behind: requests wait for it before it can read them; retry shortly"


class LoopLag:
    """How late a gevent event loop runs a timer due every `interval` s: the wait any request
    read now has had before it. Without gevent there is no loop to watch: `seconds` stays 0."""

    def __init__(self, interval: float = LAG_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.seconds = 0.0
        self._clock = clock
        self._started_pid: int | None = None
        self._lock = threading.Lock()

    def start(self) -> bool:
        """Start the monitor greenlet in this process (once); False without gevent's patch."""
        import os

        try:
            from gevent import monkey
        except ImportError:
            return False
        if not monkey.is_module_patched("time"):
            return False
        with self._lock:
            if self._started_pid == os.getpid():
                return True
            self._started_pid = os.getpid()
        import gevent

        gevent.spawn(self._run)
        return True

    def _run(self) -> None:
        import gevent

        while True:
            due = self._clock() + self.interval
            gevent.sleep(self.interval)
            self.observe(self._clock() - due)

    def observe(self, late: float) -> None:
        # Up at once, down by halves: one late timer means a backlog now; it must be gone for a
        # few ticks before the process counts as caught up.
        late = max(0.0, late)
        self.seconds = late if late > self.seconds else self.seconds * 0.5 + late * 0.5


class Front:
    """``app.wsgi_app = Front(app, app.wsgi_app)``: hits, then admission, then `inner` (Flask)."""

    def __init__(self, app: Flask, inner: WSGIApp, lag: LoopLag | None = None) -> None:
        self.inner = inner
        state: WebState = app.extensions[EXTENSION]
        self.hits = FastHits(app)
        self.proxy_hits = ProxyFastHits(app)
        self.owns = owns_cache_gets(app)  # else every request goes to Flask, which decides
        self.admission = state.read_path.admission
        self.read_path = state.read_path
        self.waiter = state.waiter
        self.namespaces = state.namespaces
        self.shed_after_s = SHED_AFTER_SECONDS
        self.lag = lag or LoopLag()
        if state.settings.web_worker_class == "gevent":
            self.lag.start()
        lag_now = self.lag
        state.read_path.behind = lambda: lag_now.seconds > EARLY_HELD_AFTER_SECONDS
        answers = {
            "in_flight": OVERLOADED,
            "lag": Refused(503, Refusal.OVERLOADED, LAG_DETAIL, 1),
            "waiters": TOO_MANY_WAITERS,
        }
        with app.app_context():  # the route's own refusals, as bytes: status, headers, body
            self.refusals = {why: _frozen(refusal(answer, count=False)) for why, answer in answers.items()}
        self.refused_reason = {why: metrics.REFUSED.labels(answer.error) for why, answer in answers.items()}
        self.refused_error = {name: metrics.REQUESTS.labels(name, AnswerOutcome.ERROR) for name in self.namespaces}
        self.front_refused = {why: metrics.FRONT_REFUSED.labels(why) for why in metrics.FRONT_REFUSED_REASONS}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if method != "GET" and method != "HEAD":
            return self.inner(environ, start_response)
        proxied = self.proxy_hits.answer(method, environ, start_response)
        if proxied is not None:
            return proxied
        if not self.owns:
            return self.inner(environ, start_response)
        target = read_target(environ)
        if target is None:
            return self.inner(environ, start_response)
        if method == "GET":
            answer = self.hits.answer(target, environ, start_response)
            if answer is not None:
                return answer
        ns_name, key = target
        if ns_name not in self.namespaces:
            return self.inner(environ, start_response)  # the route answers 404
        if self.lag.seconds > self.shed_after_s:
            return self._refuse("lag", ns_name, start_response)
        if self.waiter.waiting_on(ns_name, key) or self.read_path.reading(ns_name, key):
            if self._behind():
                return self._refuse("waiters", ns_name, start_response)
            if method == "GET" and self.hits.joins(ns_name):
                # Joins the wait under way here (no slot, no read of its own), as the route would.
                # The key is valid: the reader it joins got to its wait or read through the route's
                # validation (or through here, joining one that did).
                started = time.perf_counter()
                try:
                    answer = self.read_path.read(self.namespaces[ns_name], key)
                except Exception:  # noqa: BLE001 - the route reads again and renders what it raises
                    return self.inner(environ, start_response)
                joined = self.hits.answered(target, answer, environ, start_response, started)
                if joined is not None:
                    return joined
                environ[ANSWERED] = answer  # the route renders what is not a stored value
            return self.inner(environ, start_response)  # joins a wait under way: no slot, as before
        with self.admission.slot() as admitted:
            if not admitted:
                return self._refuse("in_flight", ns_name, start_response)
            environ[ADMITTED] = True
            if method == "GET" and self.hits.joins(ns_name):
                answered = self._read_here(target, environ, start_response)
                if answered is not None:
                    return answered
            # The slot is held until the body is built (the read route streams none).
            result = self.inner(environ, start_response)
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    def _read_here(
        self, target: tuple[str, str], environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes] | None:
        """An admitted read of `target` (a ``/v1/cache/<namespace>/<key>`` GET: read_target) the
        front door makes itself, its key checked as the route checks it:
        the answer's bytes when it is a stored positive value (a miss served after its wait, an
        early or stale value), as the route would give them; else None, the answer (if any) left
        in the environ for the route to render. Flask's request context, routing and response
        object were a tenth of a web process's CPU per cold key (py-spy, refreshbench)."""
        try:
            key = validate_key(target[1])  # read_target decoded it; the route checks it so
        except InvalidKey:
            return None  # the route answers 400 in its own words
        started = time.perf_counter()
        try:
            answer = self.read_path.read(self.namespaces[target[0]], key, admitted=True)
        except Exception:  # noqa: BLE001 - the route reads again and renders what it raises
            return None
        rendered = self.hits.answered(target, answer, environ, start_response, started, joined=False)
        if rendered is None:
            environ[ANSWERED] = answer  # a refusal, an unstored or negative answer: the route's
        return rendered

    def _behind(self) -> bool:
        """Is the refresh tier behind (the bound on reads in flight shrank below its ceiling: cold
        waits run past their target), with as many cold waiters in this process as that bound?
        Then another joiner would hold its connection for a wait likely to time out, and joiners
        took every connection a client had: it is refused at once; its key's refresh is queued."""
        limit = self.admission.shrunk_limit()
        return limit is not None and self.waiter.active >= limit

    def _refuse(self, why: str, ns_name: str, start_response: StartResponse) -> list[bytes]:
        started = time.perf_counter()
        status, headers, body = self.refusals[why]
        self.front_refused[why].inc()
        self.refused_reason[why].inc()
        self.refused_error[ns_name].inc()
        start_response(status, list(headers))
        metrics.REQUEST_DURATION.labels(ns_name).observe(time.perf_counter() - started)
        return [body]


def _frozen(response: Any) -> tuple[str, tuple[tuple[str, str], ...], bytes]:
    """A Flask response as (status line, headers, body bytes), to be sent again and again."""
    body = response.get_data()
    headers = tuple((k, v) for k, v in response.headers.items())
    return response.status, headers, body
