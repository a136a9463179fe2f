"""A proxy namespace in front of an origin whose answers break the rules: never a 500. Real
processes, and a real HTTP server that writes what it is told."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.stack import Stack, stack_for


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=60")
        self.send_header("X-Bad(Name)", "1")  # not a token: no field name at all
        self.send_header("X-Ctl", "a\x01b\x7fc")  # control characters in a value
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@pytest.fixture(scope="module")
def bad_origin_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    namespaces = f"""
[namespaces.bad]
proxy = "http://127.0.0.1:{server.server_address[1]}"
mount = "/bad"
"""
    try:
        with stack_for(tmp_path_factory.mktemp("bad_origin"), namespaces, {"ORIGIN_LATENCY_MS": "0"}) as stack:
            yield stack
    finally:
        server.shutdown()


def test_malformed_origin_header_fields_are_dropped_or_cleaned_not_a_500(bad_origin_stack: Stack) -> None:
    url = f"{bad_origin_stack.web_url}/bad/x-{uuid.uuid4().hex[:8]}"
    for headers in ({}, {}, {"Cookie": "a=1"}):  # stored, then from the cache, then forwarded
        r = requests.get(url, headers=headers, timeout=15)
        assert r.status_code == 200, r.text[:200]
        assert r.json() == {"ok": True}
        assert r.headers["X-Ctl"] == "a b c"
        assert not any(name.lower().startswith("x-bad") for name in r.headers)
