"""The demo origin's server: a deliberately slow HTTP backend that counts every call it gets.

    python -m demo_origin      # listens on BIND_HOST (127.0.0.1):ORIGIN_PORT (9000)

GET /items/<key>  sleeps ORIGIN_LATENCY_MS, fails (500) at ORIGIN_FAILURE_RATE, else JSON
                  {"key", "count" (this key's call number), "time"}; keys "missing-*" answer 404.
                  Every answer carries an ETag (a hash of its body) and a Last-Modified, and the
                  Cache-Control set by /config (per key, else the default; none unless set).
                  With "surrogate_key" set by /config, a Surrogate-Key header too ({key} is the key).
                  A key given a fixed value by /config answers that value, always with the same
                  ETag until the value changes, and 304 with no body to a GET whose
                  If-None-Match holds its ETag (or, without If-None-Match, whose
                  If-Modified-Since is not older than its Last-Modified).
GET /items?ids=a,b,c  the batch endpoint: one call (one ORIGIN_LATENCY_MS, one failure draw)
                  answering {key: value} for every listed key (percent-encoded, comma-separated),
                  each value and count as GET /items/<key> gives it; "missing-*" keys are left out.
                  Counted in "calls" once and per key in "per_key"; "batch_calls" and
                  "batch_sizes" (the keys of each, newest last) count the batch calls alone.
GET /stats        {"calls": total, "per_key": {key: n}, "bodies": n, "not_modified": n,
                   "bodies_per_key": {key: n}, "not_modified_per_key": {key: n},
                   "in_flight": n, "max_in_flight": peak,
                   "headers": {name: {value: n}}: /items calls by each non-standard request header
                   received (Authorization, X-Api-Key, ...), to show a namespace's headers arrive}
GET /api/<any>?<query>  an HTTP API for proxy namespaces (every method; counted per raw target
                  under "api:<target>"): cc=<Cache-Control>, vary=<request header> (its value
                  echoed as "varied"), status=<code>, location=<Location> set the answer's headers
POST /stats/reset zero the counters (and restart the peak from the calls in flight now)
PUT /config       {"latency_ms": .., "failure_rate": .., "body_bytes": .., "cache_control": .., "surrogate_key": ..,
                   "keys": {key: {"value": JSON, "cache_control": str | null} | null}}
                  change behaviour live. "cache_control" is the default header (null: none);
                  under "keys", a key gets a fixed value and/or its own Cache-Control (a
                  Cache-Control without "value" keeps the key's answers dynamic); null forgets
                  the key's settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

_UNSET: Any = object()


@dataclass
class KeyConfig:
    """What /config set for one key: a fixed value (with its validators) and a Cache-Control."""

    value: Any = _UNSET  # _UNSET: the key's answers stay dynamic
    etag: str = ""
    last_modified: float = 0.0  # Unix seconds, whole: what Last-Modified says
    cache_control: Any = _UNSET  # _UNSET: the default Cache-Control applies


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:24] + '"'


# Headers every client sends (and validators, which vary per key): not worth counting.
_STANDARD_HEADERS = {"host", "accept", "accept-encoding", "user-agent", "connection", "content-length"}
_STANDARD_HEADERS |= {"if-none-match", "if-modified-since"}


class OriginState:
    def __init__(self, latency_ms: float, failure_rate: float) -> None:
        self.lock = threading.Lock()
        self.latency_ms = latency_ms
        self.failure_rate = failure_rate
        self.body_bytes = 0  # pad answers to this size (to test ORIGIN_MAX_BYTES)
        self.calls = 0
        self.per_key: dict[str, int] = {}
        self.paths: list[str] = []  # raw request paths, newest last (bounded)
        self.headers: dict[str, dict[str, int]] = {}  # header name (lower case) -> value -> calls
        # /items calls being served now, and the most at once since start or the last reset:
        # shows whether the engine kept to ORIGIN_MAX_CONCURRENCY.
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies = 0  # answers that carried a value body (200)
        self.not_modified = 0  # 304 answers
        self.bodies_per_key: dict[str, int] = {}
        self.not_modified_per_key: dict[str, int] = {}
        self.cache_control: str | None = None  # default Cache-Control of every answer
        self.surrogate_key: str | None = None  # Surrogate-Key of every answer ({key}: the key)
        self.keys: dict[str, KeyConfig] = {}
        self.batch_calls = 0
        self.batch_sizes: list[int] = []  # keys of each batch call, newest last (bounded)

    def count_answer(self, key: str, with_body: bool) -> None:
        with self.lock:
            if with_body:
                self.bodies += 1
                self.bodies_per_key[key] = self.bodies_per_key.get(key, 0) + 1
            else:
                self.not_modified += 1
                self.not_modified_per_key[key] = self.not_modified_per_key.get(key, 0) + 1

    def configure_key(self, key: str, config: dict[str, Any] | None) -> None:
        """Call with the lock held."""
        if config is None:
            self.keys.pop(key, None)
            return
        if not isinstance(config, dict):
            raise ValueError("a key's config is an object")
        current = self.keys.setdefault(key, KeyConfig())
        if "value" in config:
            body = json.dumps(config["value"]).encode()
            if etag_of(body) != current.etag:
                current.value, current.etag = config["value"], etag_of(body)
                # Whole seconds, strictly increasing: If-Modified-Since must see every change.
                current.last_modified = max(float(int(time.time())), current.last_modified + 1)
        if "cache_control" in config:
            cache_control = config["cache_control"]
            if cache_control is not None and not isinstance(cache_control, str):
                raise ValueError("cache_control is a string or null")
            current.cache_control = cache_control

    def record(self, key: str, raw_path: str, headers: list[tuple[str, str]] | None = None) -> int:
        with self.lock:
            for name, value in headers or ():
                name = name.lower()
                if name not in _STANDARD_HEADERS:
                    counts = self.headers.setdefault(name, {})
                    counts[value] = counts.get(value, 0) + 1
            self.calls += 1
            count = self.per_key.get(key, 0) + 1
            self.per_key[key] = count
            self.paths.append(raw_path)
            del self.paths[:-1000]
            return count

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def reset(self) -> None:
        with self.lock:
            self.calls = 0
            self.per_key.clear()
            self.paths.clear()
            self.headers.clear()
            self.max_in_flight = self.in_flight
            self.bodies = self.not_modified = 0
            self.bodies_per_key.clear()
            self.not_modified_per_key.clear()
            self.batch_calls = 0
            self.batch_sizes.clear()


class OriginHandler(BaseHTTPRequestHandler):
    server: OriginServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body would wait ~40 ms for the
    # client's delayed ACK of the headers, adding that to every "100 ms" origin call.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet by design
        pass

    def _send_json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has no body (else a kept-alive client reads it as the next answer)
            self.wfile.write(data)

    def _not_modified(self, etag: str, last_modified: float) -> bool:
        """Whether the request's validators match (If-None-Match first, RFC 9110 13.2.2)."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
            return "*" in tags or etag in tags
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since:
            try:
                return last_modified <= parsedate_to_datetime(if_modified_since).timestamp()
            except (TypeError, ValueError):
                return False
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        state = self.server.state
        path = self.path.split("?", 1)[0]
        if path == "/stats":
            with state.lock:
                stats = {
                    "calls": state.calls,
                    "per_key": dict(state.per_key),
                    "bodies": state.bodies,
                    "not_modified": state.not_modified,
                    "bodies_per_key": dict(state.bodies_per_key),
                    "not_modified_per_key": dict(state.not_modified_per_key),
                    "paths": list(state.paths[-100:]),
                    "in_flight": state.in_flight,
                    "max_in_flight": state.max_in_flight,
                    "headers": {name: dict(values) for name, values in state.headers.items()},
                    "batch_calls": state.batch_calls,
                    "batch_sizes": list(state.batch_sizes),
                }
            self._send_json(200, stats)
            return
        if path.startswith("/api/"):
            self._answer_api(state)
            return
        if path == "/items" and "?" in self.path:
            self._answer_batch(state)
            return
        if not path.startswith("/items/"):
            self._send_json(404, {"error": "not_found"})
            return
        key = unquote_to_bytes(path[len("/items/") :]).decode("utf-8", "replace")
        state.enter()
        try:
            self._answer_item(state, key)
        finally:
            state.leave()

    def _answer_item(self, state: OriginState, key: str) -> None:
        count = state.record(key, self.path, list(self.headers.items()))
        with state.lock:
            latency, failure_rate, pad = state.latency_ms, state.failure_rate, state.body_bytes
        if latency > 0:
            time.sleep(latency / 1000)
        if failure_rate > 0 and random.random() < failure_rate:
            self._send_json(500, {"error": "origin_failure"})
            return
        if key.startswith("missing-"):
            self._send_json(404, {"error": "not_found", "key": key})
            return
        with state.lock:
            config = state.keys.get(key, KeyConfig())
            cache_control = state.cache_control if config.cache_control is _UNSET else config.cache_control
            surrogate_key = state.surrogate_key
            fixed = config.value is not _UNSET
            # A dynamic answer is made now: its Last-Modified is now.
            value, etag, last_modified = config.value, config.etag, config.last_modified or time.time()
        if not fixed:
            value = {"key": key, "count": count, "time": time.time()}
            if pad:
                value["pad"] = "x" * pad
            etag = etag_of(json.dumps(value).encode())
        headers = {"ETag": etag, "Last-Modified": formatdate(last_modified, usegmt=True)}
        if cache_control is not None:
            headers["Cache-Control"] = cache_control
        if surrogate_key:
            headers["Surrogate-Key"] = surrogate_key.replace("{key}", key)
        if fixed and self._not_modified(etag, last_modified):
            state.count_answer(key, with_body=False)
            self.send_response(304)
            for name, header in headers.items():
                self.send_header(name, header)
            self.end_headers()
            return
        state.count_answer(key, with_body=True)
        self._send_json(200, value, headers)

    def _answer_batch(self, state: OriginState) -> None:
        """GET /items?ids=<k1>,<k2>,...: one call answering every listed key as /items/<key> would."""
        # Split the raw query, before decoding: a comma inside a key arrives as %2C.
        raw_ids = next((p[4:] for p in self.path.partition("?")[2].split("&") if p.startswith("ids=")), "")
        keys = [unquote_to_bytes(k).decode("utf-8", "replace") for k in raw_ids.split(",") if k]
        state.enter()
        try:
            with state.lock:
                state.calls += 1
                state.batch_calls += 1
                state.batch_sizes.append(len(keys))
                del state.batch_sizes[:-1000]
                latency, failure_rate = state.latency_ms, state.failure_rate
            if latency > 0:
                time.sleep(latency / 1000)
            if failure_rate > 0 and random.random() < failure_rate:
                self._send_json(500, {"error": "origin_failure"})
                return
            answer: dict[str, Any] = {}
            for key in keys:
                with state.lock:
                    count = state.per_key[key] = state.per_key.get(key, 0) + 1
                if not key.startswith("missing-"):
                    answer[key] = {"key": key, "count": count, "time": time.time()}
                    state.count_answer(key, with_body=True)
            self._send_json(200, answer)
        finally:
            state.leave()

    def _answer_api(self, state: OriginState) -> None:
        """/api/<anything>?<query>: an HTTP API to put a proxy namespace in front of. Counted per
        raw target (path and query, as received). The query may ask for the answer's headers:
        cc=<Cache-Control>, vary=<request header> (echoed in the body), status=<code>,
        location=<Location>; default Cache-Control as for /items."""
        params = dict(parse_qsl(self.path.partition("?")[2]))
        count = state.record("api:" + self.path, self.path, list(self.headers.items()))
        with state.lock:
            latency, cache_control = state.latency_ms, state.cache_control
        if latency > 0:
            time.sleep(latency / 1000)
        body: dict[str, Any] = {"method": self.command, "target": self.path, "count": count, "time": time.time()}
        headers = {"X-Origin": "demo"}
        cache_control = params.get("cc", cache_control)
        if cache_control:
            headers["Cache-Control"] = cache_control
        if params.get("vary"):
            headers["Vary"] = params["vary"]
            body["varied"] = self.headers.get(params["vary"])
        if params.get("location"):
            headers["Location"] = params["location"]
        data = json.dumps(body).encode()
        headers["ETag"] = etag_of(data)
        headers["Last-Modified"] = formatdate(time.time() - 60, usegmt=True)
        state.count_answer("api:" + self.path, with_body=True)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._send_json(int(params.get("status", 201 if self.command == "POST" else 200)), body, headers)

    def do_POST(self) -> None:  # noqa: N802
        if self.path == "/stats/reset":
            self.server.state.reset()
            self._send_json(200, {"calls": 0})
            return
        if self.path.startswith("/api/"):
            self._answer_api(self.server.state)
            return
        self._send_json(404, {"error": "not_found"})

    do_DELETE = do_PATCH = do_POST  # noqa: N815 - /api/ takes every unsafe method

    def __getattr__(self, name: str) -> Any:
        # Any other method (an extension method such as M-SEARCH) is answered as a POST is.
        if name.startswith("do_") and name[3:].isupper():
            return self.do_POST
        raise AttributeError(name)

    def do_OPTIONS(self) -> None:  # noqa: N802
        self.send_response(204)
        self.send_header("Allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:  # noqa: N802
        if self.path.startswith("/api/"):
            self._answer_api(self.server.state)
            return
        if self.path != "/config":
            self._send_json(404, {"error": "not_found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            config = json.loads(self.rfile.read(length) or b"{}")
            state = self.server.state
            with state.lock:
                if "latency_ms" in config:
                    state.latency_ms = max(0.0, float(config["latency_ms"]))
                if "failure_rate" in config:
                    state.failure_rate = min(1.0, max(0.0, float(config["failure_rate"])))
                if "body_bytes" in config:
                    state.body_bytes = max(0, int(config["body_bytes"]))
                if "cache_control" in config:
                    if config["cache_control"] is not None and not isinstance(config["cache_control"], str):
                        raise ValueError("cache_control is a string or null")
                    state.cache_control = config["cache_control"]
                if "surrogate_key" in config:
                    if config["surrogate_key"] is not None and not isinstance(config["surrogate_key"], str):
                        raise ValueError("surrogate_key is a string or null")
                    state.surrogate_key = config["surrogate_key"]
                for key, key_config in (config.get("keys") or {}).items():
                    state.configure_key(str(key), key_config)
                current = {
                    "latency_ms": state.latency_ms,
                    "failure_rate": state.failure_rate,
                    "body_bytes": state.body_bytes,
                    "cache_control": state.cache_control,
                    "keys": sorted(state.keys),
                }
        except (ValueError, TypeError, AttributeError):
            self._send_json(
                400,
                {
                    "error": "bad_config",
                    "detail": "send JSON {latency_ms, failure_rate, body_bytes, cache_control, "
                    "keys: {key: {value, cache_control}}}",
                },
            )
            return
        self._send_json(200, current)


class OriginServer(ThreadingHTTPServer):
    """One thread per connection: a sleeping call costs a thread, not a core, so a few hundred
    concurrent 100 ms calls are served in ~100 ms (the listen backlog absorbs connect bursts)."""

    daemon_threads = True
    request_queue_size = 4096

    def __init__(self, address: tuple[str, int], state: OriginState) -> None:
        super().__init__(address, OriginHandler)
        self.state = state


def main() -> None:
    port = int(os.environ.get("ORIGIN_PORT", "9000"))
    # Loopback unless told otherwise, like the rest of the stack (BIND_HOST; ORIGIN_HOST for it alone).
    host = os.environ.get("ORIGIN_HOST") or os.environ.get("BIND_HOST") or "127.0.0.1"
    if ":" in host:
        OriginServer.address_family = socket.AF_INET6
    state = OriginState(
        latency_ms=float(os.environ.get("ORIGIN_LATENCY_MS", "100")),
        failure_rate=float(os.environ.get("ORIGIN_FAILURE_RATE", "0")),
    )
    server = OriginServer((host, port), state)
    print(
        f"demo origin on http://{host}:{port} (latency {state.latency_ms:g} ms, failure rate {state.failure_rate:g})",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
