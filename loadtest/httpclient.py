"""A minimal, fast HTTP/1.1 keep-alive client on asyncio protocols, for GET only.

A general-purpose client (aiohttp, httpx) spends more CPU per request than
this generator can afford on 2 shared cores at 1000 req/s. This one writes a
pre-built request and parses just the status line and the headers the load
test reads (X-Cache, Cache-Control, Age, Content-Length, Transfer-Encoding,
Connection). One request is outstanding per connection (no pipelining).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from urllib.parse import urlsplit


class HTTPClientError(Exception):
    """The request got no complete HTTP response (refused, reset, closed, timed out, bad framing)."""

    kind = "connection"


class HTTPTimeout(HTTPClientError):
    kind = "timeout"


class HTTPProtocolError(HTTPClientError):
    kind = "protocol"


@dataclass(slots=True)
class Response:
    status: int
    x_cache: str
    cache_control: str
    body: bytes
    age: int = -1  # the Age header in seconds, -1 when absent


def build_get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: herdless-loadtest\r\n\r\n".encode("latin-1")


class _Connection(asyncio.Protocol):
    __slots__ = (
        "transport",
        "buf",
        "waiter",
        "closed",
        "reused",
        "got_bytes",
        "_head",
        "_timeout_handle",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.reused = False
        self.got_bytes = False
        self._head: tuple[int, str, str, int, bool, bool, int, int] | None = None
        self._timeout_handle: asyncio.TimerHandle | None = None

    # asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HTTPClientError(f"connection closed: {exc or 'EOF'}"))

    # request/response --------------------------------------------------
    def send(self, raw: bytes, timeout: float) -> asyncio.Future[Response]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        self.waiter = fut
        self.got_bytes = False
        self._head = None
        self._timeout_handle = loop.call_later(timeout, self._on_timeout)
        assert self.transport is not None
        self.transport.write(raw)
        if self.buf:
            self._parse()
        return fut

    def _on_timeout(self) -> None:
        self._timeout_handle = None
        self._fail(HTTPTimeout("response timed out"))
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        fut = self.waiter
        if fut is None:
            return
        self.waiter = None
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        if not fut.done():
            fut.set_exception(exc)

    def _parse(self) -> None:
        buf = self.buf
        head = self._head
        if head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail(HTTPProtocolError("response head too large"))
                    self.abort()
                return
            try:
                head = self._parse_head(bytes(buf[:end]), end + 4)
            except (ValueError, IndexError) as exc:
                self._fail(HTTPProtocolError(f"bad response head: {exc}"))
                self.abort()
                return
            self._head = head
        status, x_cache, cache_control, body_start, chunked, close, length, age = head
        if chunked:
            parsed = _parse_chunked(buf, body_start)
            if parsed is None:
                return
            body, consumed = parsed
        else:
            consumed = body_start + length
            if len(buf) < consumed:
                return
            body = bytes(buf[body_start:consumed])
        del buf[:consumed]
        self._head = None
        fut = self.waiter
        self.waiter = None
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        if close:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        if fut is not None and not fut.done():
            fut.set_result(Response(status, x_cache, cache_control, body, age))

    @staticmethod
    def _parse_head(head: bytes, body_start: int) -> tuple[int, str, str, int, bool, bool, int, int]:
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        version = status_line[0]
        status = int(status_line[1])
        x_cache = ""
        cache_control = ""
        chunked = False
        close = version == b"HTTP/1.0"
        length = 0
        age = -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"x-cache":
                x_cache = value.strip().decode("latin-1")
            elif name == b"age":
                age = int(value)
            elif name == b"cache-control":
                cache_control = value.strip().decode("latin-1")
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                token = value.strip().lower()
                if token == b"close":
                    close = True
                elif token == b"keep-alive":
                    close = False
        if status in (204, 304) or 100 <= status < 200:
            length = 0
            chunked = False
        return status, x_cache, cache_control, body_start, chunked, close, length, age


def _parse_chunked(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """(body, bytes consumed) once the whole chunked body is in `buf`, else None."""
    parts: list[bytes] = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            # skip trailers up to the empty line
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                if line_end == pos:
                    return b"".join(parts), pos + 2
                pos = line_end + 2
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


class ConnectionPool:
    """Keep-alive connections to one host:port, at most `max_connections` open at once.

    Idle connections are reused last-in-first-out, so the hot ones stay warm and
    the server may time out the rest. A GET that fails on a reused connection
    before any byte came back is retried once on a fresh connection: the server
    closed an idle keep-alive connection just as we wrote to it.
    """

    def __init__(self, host: str, port: int, max_connections: int = 512, timeout: float = 15.0) -> None:
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self.open_count = 0
        self.peak_open = 0
        self.connects = 0
        self.waited = 0  # requests that found every connection busy and the pool at its cap

    @classmethod
    def for_url(cls, url: str, **kwargs: object) -> ConnectionPool:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// URLs are supported, not {url!r}")
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, **kwargs)  # type: ignore[arg-type]

    @property
    def host_header(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self, deadline: float | None = None) -> _Connection:
        loop = asyncio.get_running_loop()
        self.open_count += 1
        self.peak_open = max(self.peak_open, self.open_count)
        try:
            opening = loop.create_connection(_Connection, self.host, self.port)
            if deadline is None:
                _, conn = await opening
            else:
                _, conn = await asyncio.wait_for(opening, max(0.0, deadline - loop.time()))
        except TimeoutError:
            self.open_count -= 1
            self._wake_one_waiter()
            raise HTTPTimeout("connect timed out") from None
        except BaseException:
            self.open_count -= 1
            self._wake_one_waiter()
            raise
        self.connects += 1
        return conn

    async def acquire(self, deadline: float | None = None) -> _Connection:
        """An idle connection, a new one, or (at the cap) the next one released; by `deadline` (loop time)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self.open_count -= 1
        if self.open_count < self.max_connections:
            return await self.connect(deadline)
        self.waited += 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiters.append(fut)
        try:
            got = await asyncio.wait_for(fut, None if deadline is None else max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise HTTPTimeout("no free connection before the deadline") from None
        if got is None:  # a slot was freed: open a new connection
            return await self.connect(deadline)
        return got

    def release(self, conn: _Connection) -> None:
        if conn.closed or conn.waiter is not None:
            self.open_count -= 1
            conn.abort()
            self._wake_one_waiter()
            return
        conn.reused = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.append(conn)

    def _wake_one_waiter(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def get(self, raw: bytes, timeout: float | None = None, deadline: float | None = None) -> Response:
        """GET with the pre-built request `raw`; fails with HTTPTimeout past `timeout` s or the `deadline`.

        `deadline` (event-loop time) bounds the whole request, waiting for a free connection included.
        """
        loop = asyncio.get_running_loop()
        timeout = self.timeout if timeout is None else timeout
        if deadline is None:
            deadline = loop.time() + timeout
        conn = await self.acquire(deadline)
        try:
            return await conn.send(raw, max(0.001, deadline - loop.time()))
        except HTTPTimeout:
            raise
        except HTTPClientError:
            if not (conn.reused and not conn.got_bytes):
                raise
        finally:
            self.release(conn)
        conn = await self.connect(deadline)
        try:
            return await conn.send(raw, max(0.001, deadline - loop.time()))
        finally:
            self.release(conn)

    def close(self) -> None:
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
        self.open_count = 0
