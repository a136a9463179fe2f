"""Origin adapters: fetch one key from an HTTP URL template or a Python callable.

Both can revalidate: given the stored value's validators (its origin ETag and Last-Modified),
an HTTP origin is asked with If-None-Match / If-Modified-Since and may answer 304; a callable
that accepts a ``validator`` keyword may return ``NOT_MODIFIED``. Either way the fetch returns
``NotModified`` and no body travels."""

from __future__ import annotations

import errno
import inspect
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3

from shared.freshness import CacheHeaders
from shared.namespaces import CallableImportError, Namespace, import_callable
from shared.protocol import FailureCode
from shared.tags import callable_tags, header_tags


class OriginError(Exception):
    """The origin failed: unreachable, timed out, a 5xx, 408 or 429, or a callable that raised.
    Counts against the breaker (`trips_breaker`).

    `outcome` labels herdless_origin_calls_total; `code` is the `error` of the answer a reader
    gets when no value can be served (it travels to the web tier with the key's cooldown)."""

    outcome = "error"
    code: FailureCode = FailureCode.ORIGIN_ERROR
    # A failure of the origin itself, whichever key was asked: it counts against the breaker.
    trips_breaker = True


class KeyFault(OriginError):
    """The origin works, but this key's answer is unusable: a 4xx other than 404, 408 and 429, a
    body over ORIGIN_MAX_BYTES, invalid JSON. A client chooses its keys, so this is the key's
    problem: the key cools down, the breaker does not count it (shared/breaker.py)."""

    trips_breaker = False


class OriginTimeout(OriginError):
    outcome = "timeout"
    code = FailureCode.ORIGIN_TIMEOUT


class OriginTooLarge(KeyFault):
    """The answer's body is over ORIGIN_MAX_BYTES."""

    code = FailureCode.ORIGIN_TOO_LARGE


class OriginUnimportable(OriginError):
    """A callable origin's module or function cannot be imported in this process."""

    code = FailureCode.ORIGIN_UNIMPORTABLE


def status_error(status: int) -> OriginError:
    """The failure an HTTP status other than 200, 304 and 404 stands for: a 5xx, a 408 (it timed
    out) or a 429 (it is overloaded) is the origin's own trouble, any other the key's."""
    kind = OriginError if status >= 500 or status in (408, 429) else KeyFault
    return kind(f"origin answered HTTP {status}")


class NotFound(Exception):
    """The origin says the key does not exist (HTTP 404). Cached as a negative entry; not a failure.

    A Python callable origin raises this (or LookupError) for a missing key."""


@dataclass(frozen=True)
class Validators:
    """What identifies a stored value to its origin: the origin's ETag and Last-Modified ("" when
    the origin gave none)."""

    etag: str = ""
    last_modified: str = ""

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)


@dataclass(frozen=True)
class OriginResponse:
    """A value from the origin (HTTP 200, or what a callable returned)."""

    body: bytes
    content_type: str
    validators: Validators = field(default_factory=Validators)
    cache: CacheHeaders = field(default_factory=CacheHeaders)
    tags: tuple[str, ...] = ()  # the answer's own tags (shared/tags.py)


@dataclass(frozen=True)
class NotModified:
    """The origin confirmed the stored value (HTTP 304, or a callable's NOT_MODIFIED). It may
    carry new validators and cache headers for it."""

    validators: Validators = field(default_factory=Validators)
    cache: CacheHeaders = field(default_factory=CacheHeaders)


class _NotModifiedSentinel:
    def __repr__(self) -> str:
        return "NOT_MODIFIED"


# What a callable origin returns when the validator it was passed is still current.
NOT_MODIFIED: Any = _NotModifiedSentinel()


@dataclass(frozen=True)
class OriginValue:
    """What a callable origin may return instead of a bare value: a validator (passed back as
    `validator` next time), tags (shared/tags.py), a Cache-Control (freshness = "origin")."""

    value: Any
    etag: str = ""
    last_modified: str = ""
    cache_control: str | None = None
    tags: Sequence[str] = ()


def encode_key_for_path(key: str) -> str:
    """Percent-encode a key into one path segment: '/', '?', '#', '@' and '%' are encoded,
    and a key of only dots is encoded too so no client or proxy can resolve it as '..'."""
    encoded = quote(key, safe="")
    if set(key) == {"."}:
        encoded = encoded.replace(".", "%2E")
    return encoded


# Idle connections an HTTP origin keeps per host unless told otherwise (a worker's concurrency).
IDLE_CONNECTIONS = 128


def _is_json(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


class HttpOrigin:
    conditional = True  # a GET can always carry If-None-Match / If-Modified-Since

    def __init__(self, ns: Namespace, max_bytes: int, connections: int = IDLE_CONNECTIONS) -> None:
        self.template = ns.origin
        self.timeout = ns.origin_timeout_seconds
        self.max_bytes = max_bytes
        # The namespace's own headers (credentials) go with every request; never logged.
        self.headers = {"Accept": "*/*", "User-Agent": "herdless", **ns.origin_headers.as_dict()}
        self.tag_header = ns.tag_header
        # This origin's own pool, closed with it. maxsize: connections kept per origin host;
        # block=False lets a burst open more (closed after use): no cap on refresh concurrency.
        self._pool = urllib3.PoolManager(num_pools=32, maxsize=max(8, connections), block=False, retries=False)
        self._aim(self.template)

    def _aim(self, template: str) -> None:
        """Send every call to `template`'s scheme and host: {key} is never in them (shared/namespaces.py,
        shared/batch_config.py), so there is one host, whose pool is looked up once."""
        parts = urlsplit(template)
        self._origin_prefix = f"{parts.scheme}://{parts.netloc}"
        self._host = self._pool.connection_from_url(self._origin_prefix)

    def close(self) -> None:
        """Close this origin's idle connections; a later fetch opens new ones."""
        self._pool.clear()
        self._host = self._pool.connection_from_url(self._origin_prefix)

    def url_for(self, key: str) -> str:
        return self.template.replace("{key}", encode_key_for_path(key))

    def fetch(
        self, key: str, deadline: float | None = None, validators: Validators | None = None
    ) -> OriginResponse | NotModified:
        """GET the key. `deadline` (time.monotonic()) bounds the whole call, body included: a
        per-read timeout alone would let a slowly trickled body run forever. With `validators`
        the GET is conditional and a 304 returns NotModified."""
        url = self.url_for(key)
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        conditional: dict[str, str] = {}
        if validators and validators.etag:
            conditional["If-None-Match"] = validators.etag
        if validators and validators.last_modified:
            conditional["If-Modified-Since"] = validators.last_modified
        try:
            resp = self._send(url, deadline, conditional)
        except urllib3.exceptions.NewConnectionError as exc:
            # A subclass of ConnectTimeoutError in urllib3 2, but a refused connection is no timeout.
            raise OriginError(f"origin unreachable: {type(exc).__name__} ({_os_error_name(exc)})") from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise OriginTimeout(f"origin timed out after {self.timeout:g}s") from exc
        except urllib3.exceptions.HTTPError as exc:
            # The reason's type only (e.g. RemoteDisconnected, ConnectionResetError): never a
            # message that could carry the URL.
            reason = next((type(arg).__name__ for arg in exc.args if isinstance(arg, BaseException)), "")
            raise OriginError(f"origin unreachable: {type(exc).__name__}" + (f" ({reason})" if reason else "")) from exc
        complete = False
        try:
            if resp.status == 404:
                raise NotFound("origin answered 404")
            if resp.status == 304:
                if not conditional:
                    raise KeyFault("origin answered 304 to a request that was not conditional")
                resp.drain_conn()
                complete = True
                return NotModified(_validators(resp.headers), _cache_headers(resp.headers))
            if resp.status != 200:
                raise status_error(resp.status)
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise OriginTooLarge(f"origin body of {declared} bytes exceeds ORIGIN_MAX_BYTES={self.max_bytes}")
            body = self._read_body(resp, deadline)
            complete = True
        except urllib3.exceptions.TimeoutError as exc:
            raise OriginTimeout(f"origin timed out after {self.timeout:g}s") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise OriginError(f"origin read failed: {type(exc).__name__}") from exc
        finally:
            if complete:
                resp.release_conn()
            else:
                # Never hand a half-read connection back to the pool.
                resp.close()
        content_type = resp.headers.get("Content-Type", "application/octet-stream")
        checked = _checked(body, content_type)
        validators, tags = _validators(resp.headers), header_tags(resp.headers.get(self.tag_header))
        return OriginResponse(checked.body, checked.content_type, validators, _cache_headers(resp.headers), tags)

    def _send(self, url: str, deadline: float, conditional: dict[str, str]) -> Any:
        """Send the GET; once more if the connection was refused (the origin never saw the request).
        Nothing else is retried here: a request that may have reached the origin is never sent
        twice, so the origin sees one call per refresh; the key's cooldown paces the next try."""
        for attempt in (1, 2):
            remaining = max(0.001, deadline - time.monotonic())
            try:
                return self._host.urlopen(
                    "GET",
                    _request_target(url[len(self._origin_prefix) :]),
                    preload_content=False,
                    redirect=False,
                    timeout=urllib3.Timeout(connect=min(remaining, 3.0), read=remaining),
                    headers={**self.headers, **conditional},
                )
            except urllib3.exceptions.NewConnectionError as exc:
                # A listener whose accept queue overflowed in a burst refuses the odd connection
                # (seen on loopback with 50 refreshes starting at once): try once more shortly;
                # an origin that is really down refuses again and counts as a failure.
                if attempt == 2 or _os_error_name(exc) != "ECONNREFUSED" or deadline - time.monotonic() <= 0.1:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def _read_body(self, resp: Any, deadline: float) -> bytes:
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OriginTimeout(f"origin timed out after {self.timeout:g}s")
            if sock is not None:
                # Each read waits at most until the deadline, so the total is bounded too.
                sock.settimeout(remaining)
            chunk = resp.read1(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_bytes:
                raise OriginTooLarge(f"origin body exceeds ORIGIN_MAX_BYTES={self.max_bytes}")
            chunks.append(chunk)


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """`RuntimeError: database is down`, on one line and cut at `limit` characters, for the
    log and error details (a callable's own message: the operator needs it to diagnose)."""
    message = " ".join(str(exc).split())
    if len(message) > limit:
        message = message[: limit - 3] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _request_target(rest: str) -> str:
    """The request target of a URL past its scheme and host ("?ids=a" of "http://h?ids=a" is "/?ids=a")."""
    return rest if rest.startswith("/") else "/" + rest


def _os_error_name(exc: BaseException) -> str:
    """The errno behind a connection failure (ECONNREFUSED, EMFILE, ...), for the log."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return errno.errorcode.get(cause.errno, str(cause.errno))
        cause = cause.__cause__ or cause.__context__
    return "no errno"


def _validators(headers: Any) -> Validators:
    return Validators(headers.get("ETag", ""), headers.get("Last-Modified", ""))


def _cache_headers(headers: Any) -> CacheHeaders:
    return CacheHeaders(headers.get("Cache-Control"), headers.get("Expires"), headers.get("Date"))


def _checked(body: bytes, content_type: str) -> OriginResponse:
    if _is_json(content_type):
        try:
            json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser
            raise KeyFault("origin sent invalid JSON") from exc
    return OriginResponse(body=body, content_type=content_type)


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("threading"))


# Most OS threads that callables of one worker process may occupy at once under gevent.
CALLABLE_THREADS = 256


def _outcome_of(fn: Callable[[str], Any], arg: str) -> tuple[bool, Any]:
    """(False, fn(arg)), or (True, the exception it raised)."""
    try:
        return False, fn(arg)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        return True, exc


def run_with_deadline(fn: Callable[[str], Any], arg: str, deadline: float) -> Any:
    """Run a blocking callable in a real OS thread and wait for it until `deadline`.

    A callable may block in C code or in an unpatched library: run on the event loop it would
    stall every other refresh of a gevent worker, so it always gets an OS thread (gevent's hub
    threadpool under gevent, a daemon thread otherwise). Past the deadline the caller stops
    waiting and the call is abandoned: its thread finishes in the background and its result is
    dropped. Raises OriginTimeout at the deadline."""
    timeout = max(0.0, deadline - time.monotonic())
    if _gevent_patched():
        import gevent

        pool = gevent.get_hub().threadpool
        if pool.maxsize < CALLABLE_THREADS:
            pool.maxsize = CALLABLE_THREADS
        # The exception comes back as a value: raised inside the pool, gevent's hub would also
        # print its traceback to stderr, a dozen lines per failed refresh besides our one line.
        async_result = pool.spawn(_outcome_of, fn, arg)
        try:
            raised, value = async_result.get(timeout=timeout)
        except gevent.Timeout:
            raise OriginTimeout("origin callable missed its deadline") from None
        if raised:
            raise value
        return value
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn(arg)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="origin-callable", daemon=True).start()
    if not done.wait(timeout):
        raise OriginTimeout("origin callable missed its deadline")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _accepts_validator(func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return any(p.name == "validator" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class CallableOrigin:
    """A Python function `f(key) -> bytes | str | JSON-able | OriginValue`, run in an OS thread
    under a deadline (ORIGIN_TIMEOUT_SECONDS). Raise NotFound or LookupError for a missing key.

    A function with a `validator` keyword parameter, `f(key, validator=None)`, opts in to
    revalidation: `validator` is the ETag it gave the stored value (through OriginValue), or None
    when there is none, and returning NOT_MODIFIED keeps the stored value for a new lifetime."""

    def __init__(self, ns: Namespace, max_bytes: int) -> None:
        try:
            self.func: Callable[..., Any] = import_callable(ns.origin)
        except CallableImportError as exc:
            raise OriginUnimportable(str(exc)) from None
        self.max_bytes = max_bytes
        self.timeout = ns.origin_timeout_seconds
        self.conditional = _accepts_validator(self.func)

    def close(self) -> None:
        """Nothing to close: a callable holds no connections of ours."""

    def fetch(
        self, key: str, deadline: float | None = None, validators: Validators | None = None
    ) -> OriginResponse | NotModified:
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        # Only a function that takes a validator is ever passed one (and may answer NOT_MODIFIED).
        validator = validators.etag if self.conditional and validators and validators.etag else None
        func = partial(self.func, validator=validator) if self.conditional else self.func
        try:
            result = run_with_deadline(func, key, deadline)
        except (NotFound, LookupError) as exc:
            raise NotFound(str(exc)) from exc
        except OriginError:
            raise
        except Exception as exc:
            raise OriginError(f"origin callable raised {describe_exception(exc)}") from exc
        if result is NOT_MODIFIED:
            if validator is None:
                raise KeyFault("origin callable returned NOT_MODIFIED without being passed a validator")
            return NotModified(validators or Validators())
        meta = OriginValue(result)
        if isinstance(result, OriginValue):
            meta, result = result, result.value
        if isinstance(result, bytes | bytearray):
            body, ctype = bytes(result), "application/octet-stream"
        elif isinstance(result, str):
            body, ctype = result.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            try:
                body = json.dumps(result, separators=(",", ":")).encode("utf-8")
            except (TypeError, ValueError) as exc:
                raise KeyFault("origin callable returned a value that is not JSON-able") from exc
            ctype = "application/json"
        if len(body) > self.max_bytes:
            raise OriginTooLarge(f"origin body exceeds ORIGIN_MAX_BYTES={self.max_bytes}")
        return OriginResponse(
            body=body,
            content_type=ctype,
            validators=Validators(meta.etag, meta.last_modified),
            cache=CacheHeaders(cache_control=meta.cache_control),
            tags=callable_tags(meta.tags),
        )


Origin = HttpOrigin | CallableOrigin


def make_origin(ns: Namespace, max_bytes: int, connections: int = IDLE_CONNECTIONS) -> Origin:
    """The origin of `ns`; an HTTP one keeps up to `connections` idle connections per host."""
    return HttpOrigin(ns, max_bytes, connections) if ns.is_http else CallableOrigin(ns, max_bytes)
