"""The HTTP client of proxy namespaces: one request to the origin, any method, under a deadline.

Used by the worker's refreshes (GET, replayed) and by the web tier for what is never answered
from the cache (unsafe methods, requests that bypass it). The URL is built by
``ProxyConfig.upstream_url`` from a validated target (web/proxy_target.py). The answer is read
whole, bounded by ORIGIN_MAX_BYTES (a larger one is an OriginTooLarge, 502 to a client): proxied
answers are size-bounded, not streamed. Redirects are never followed: a 3xx is an answer.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.httpcache.fields import Headers, strip_hop_by_hop, well_formed, without
from shared.httpcache.surrogate import with_surrogate_capability
from shared.namespaces import Namespace
from shared.origin import KeyFault, OriginError, OriginTimeout, OriginTooLarge

# Request fields never forwarded as the client sent them: the transport's own (urllib3 sets
# Host and Content-Length), and the hop-by-hop ones (httpcache strips those).
TRANSPORT_FIELDS = ("host", "content-length", "expect")
# Methods a request may be sent again with after a kept-alive connection failed (RFC 9110
# §9.2.2). Any other (POST, PATCH, extension methods) goes on a new connection and is sent once:
# an origin that hung up may have acted on it.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class FinalResponse(http.client.HTTPResponse):
    """An HTTPResponse that reads past every interim 1xx answer (103 Early Hints, 102
    Processing), not only 100 Continue as http.client does: taken for the answer, a 103 left the
    real one in the kept-alive connection, read as the answer to the next request sent on it."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]  # private, in every 3.x
            if not 102 <= status < 200:  # 100: http.client skips it; 101 ends HTTP on the connection
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's fields: nothing to keep


@dataclass(frozen=True)
class ProxiedResponse:
    status: int
    headers: Headers
    body: bytes


class ProxyOrigin:
    """The origin of one proxy namespace, with a small pool of keep-alive connections.
    Thread- and greenlet-safe.

    http.client, not urllib3: urllib3 re-encodes a request target (it upper-cases every %xx
    and escapes characters it deems invalid), and a proxied target is sent byte for byte."""

    def __init__(self, ns: Namespace, max_bytes: int, connections: int = 64) -> None:
        assert ns.proxy is not None
        self.ns = ns
        self.config = ns.proxy
        self.max_bytes = max_bytes
        self.timeout = ns.origin_timeout_seconds
        self._own = ns.origin_headers.items  # the namespace's own headers (secrets, never logged)
        self._own_names = {n.lower() for n, _ in self._own}
        parts = urlsplit(f"{self.config.scheme}://{self.config.netloc}")
        self._host, self._port = parts.hostname or "", parts.port
        self._https = self.config.scheme == "https"
        self._idle: deque[http.client.HTTPConnection] = deque()
        self._max_idle = max(8, connections)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for conn in idle:
            conn.close()

    def _connection(self, timeout: float, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """An idle kept-alive connection (most recently used first), or a new one when there is
        none or ``fresh`` is asked for."""
        with self._lock:
            if self._idle and not fresh:
                return self._idle.pop(), True
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        conn.response_class = FinalResponse
        return conn, False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def request(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | None = None,
        deadline: float | None = None,
    ) -> ProxiedResponse:
        """Send `method` to the target's URL with `headers` (end-to-end fields of the client's or
        the replayed request) and the namespace's own headers; the answer, whatever its status.
        Raises OriginError (unreachable, reset), OriginTimeout, OriginTooLarge."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        sent = without(strip_hop_by_hop(headers), (*TRANSPORT_FIELDS, *self._own_names)) + self._own
        # Announce this cache to the origin (Edge Architecture): it may answer with
        # Surrogate-Control meant for us (shared/httpcache/surrogate.py).
        sent = with_surrogate_capability(sent)
        path = self.config.base_path + target
        if not path.startswith("/"):
            path = "/" + path
        idempotent = method in IDEMPOTENT_METHODS
        for attempt in (1, 2):
            remaining = max(0.001, deadline - time.monotonic())
            # The retry takes a new connection: the other idle ones may have been closed by the
            # origin just the same (a keep-alive timeout closes every idle connection of a pause).
            conn, reused = self._connection(remaining, fresh=attempt > 1 or not idempotent)
            try:
                conn.timeout = remaining
                if conn.sock is not None:
                    conn.sock.settimeout(remaining)
                conn.putrequest(method, path, skip_accept_encoding=True)
                for name, value in sent:
                    conn.putheader(name, value)
                if body is not None or method in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body or b"")))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = b"" if method == "HEAD" else self._read_body(resp, conn, deadline)
                resp.close()  # the connection may send the next request (its socket stays open)
            except TimeoutError as exc:
                conn.close()
                raise OriginTimeout(f"origin timed out after {self.timeout:g}s") from exc
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                # Most likely a kept-alive connection the origin closed meanwhile, which the
                # request never reached: one more try on a new connection. Only idempotent
                # requests are ever sent on a reused connection (IDEMPOTENT_METHODS).
                if (
                    reused
                    and attempt == 1
                    and isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError)
                ):
                    continue
                if isinstance(exc, http.client.RemoteDisconnected):
                    # The origin took this request and hung up without an answer: this URL's
                    # fault as far as anyone can tell, not the origin's (a client's choice of
                    # URLs must not open the breaker for everyone); the URL cools down alone.
                    raise KeyFault(f"origin closed the connection without answering: {type(exc).__name__}") from exc
                raise OriginError(f"origin unreachable: {type(exc).__name__}") from exc
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                self._give_back(conn)
            return ProxiedResponse(resp.status, well_formed(tuple(resp.getheaders())), data)
        raise AssertionError("unreachable")

    def _read_body(self, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection, deadline: float) -> bytes:
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise OriginTooLarge(f"origin body of {declared} bytes exceeds ORIGIN_MAX_BYTES={self.max_bytes}")
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OriginTimeout(f"origin timed out after {self.timeout:g}s")
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunk = resp.read1(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_bytes:
                raise OriginTooLarge(f"origin body exceeds ORIGIN_MAX_BYTES={self.max_bytes}")
            chunks.append(chunk)
