"""A tiny HTTP origin run inside the test process, whose misbehaviour the test controls and which
records every call: when it started and ended, and how many were in flight at once."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from tests.stack import free_port

Mode = Literal["ok", "fail", "bad_json", "trickle"]

# A key (the path's last segment) may choose its own answer, whatever the mode: `status-NNN-...`
# is answered HTTP NNN, `badjson-...` with invalid JSON, `huge-...` with HUGE_BYTES of JSON,
# `deepjson-...` (anywhere in the last segment) with JSON nested DEEP_JSON arrays deep.
KEY_STATUS = re.compile(r"/status-(\d{3})-[^/]*$")
HUGE_BYTES = 64 * 1024
DEEP_JSON = 100_000  # past the parser's recursion limit, well under ORIGIN_MAX_BYTES


@dataclass
class Call:
    path: str
    started: float  # time.monotonic()
    ended: float = 0.0
    status: int = 0


@dataclass
class FixtureOrigin:
    mode: Mode = "ok"
    latency: float = 0.0
    port: int = field(default_factory=free_port)
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _gate: threading.Event = field(default_factory=threading.Event)
    _connections: set[socket.socket] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FixtureOrigin:
        origin = self
        self._gate.set()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with origin._lock:
                    origin._connections.add(self.connection)

            def finish(self) -> None:
                with origin._lock:
                    origin._connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                call = origin._enter(self.path)
                try:
                    # A held origin answers nobody until released (bounded, so a forgotten
                    # hold cannot hang a test run).
                    origin._gate.wait(30)
                    with origin._lock:
                        mode, latency = origin.mode, origin.latency
                    if latency:
                        time.sleep(latency)
                    chosen = KEY_STATUS.search(self.path)
                    last = self.path.rsplit("/", 1)[-1]
                    if chosen:
                        status, body, ctype = int(chosen[1]), b'{"error": "chosen"}', "application/json"
                    elif last.startswith("badjson-"):
                        status, body, ctype = 200, b'{"key": "truncated', "application/json"
                    elif "deepjson-" in last:  # a key's path, or a batch call naming it
                        status, ctype = 200, "application/json"
                        body = b"[" * DEEP_JSON + b"]" * DEEP_JSON
                    elif last.startswith("huge-"):
                        status, ctype = 200, "application/json"
                        body = json.dumps({"pad": "x" * HUGE_BYTES}).encode()
                    elif mode == "fail":
                        status, body, ctype = 500, b'{"error": "down"}', "application/json"
                    elif mode == "bad_json":
                        status, body, ctype = 200, b'{"key": "truncated', "application/json"
                    else:
                        status, ctype = 200, "application/json"
                        body = json.dumps({"path": self.path, "n": len(origin.calls)}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if mode == "trickle":
                        # One byte at a time, each well within any per-read timeout: only a
                        # deadline on the whole call stops it.
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(0.2)
                    else:
                        self.wfile.write(body)
                    call.status = status
                finally:
                    origin._leave(call)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        # Like a dead process: kept-alive connections go too, not just the listening socket.
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold(self) -> None:
        """Keep every call waiting (in flight) until release()."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def set(self, mode: Mode | None = None, latency: float | None = None) -> None:
        with self._lock:
            if mode is not None:
                self.mode = mode
            if latency is not None:
                self.latency = latency

    def reset_max_in_flight(self) -> None:
        with self._lock:
            self.max_in_flight = self.in_flight

    def _enter(self, path: str) -> Call:
        call = Call(path=path, started=time.monotonic())
        with self._lock:
            self.calls.append(call)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return call

    def _leave(self, call: Call) -> None:
        with self._lock:
            self.in_flight -= 1
            call.ended = time.monotonic()

    def __enter__(self) -> FixtureOrigin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
