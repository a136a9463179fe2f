"""The load test reads the running stack's TTLs (GET /v1/namespaces, with the admin token when set)
and refuses to start while a circuit breaker of its origins is open."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtest.preflight import check_stack
from tests.stack import ROOT


class FakeStack(ThreadingHTTPServer):
    """Answers /v1/namespaces (behind a Bearer token when `token` is set) and /status.json."""

    token: str | None = None
    breakers: dict[str, str] = {}
    seen_authorization: list[str | None]

    def namespaces(self) -> dict:
        return {
            "namespaces": [
                {"name": "demo", "origin": "127.0.0.1:9000", "cache_ttl_seconds": 5.0},
                {"name": "slow", "origin": "slow.example", "cache_ttl_seconds": 120.0},
            ]
        }


class Handler(BaseHTTPRequestHandler):
    server: FakeStack

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/v1/namespaces":
            self.server.seen_authorization.append(self.headers.get("Authorization"))
            if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
                return self._answer(401, {"error": "unauthorized"})
            return self._answer(200, self.server.namespaces())
        if self.path == "/status.json":
            return self._answer(200, {"breakers": self.server.breakers})
        self._answer(404, {"error": "not_found"})

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def fake() -> Iterator[FakeStack]:
    server = FakeStack(("127.0.0.1", 0), Handler)
    server.seen_authorization = []
    # As the real page names them: by the namespaces using each origin, never by address.
    server.breakers = {"origin of demo, demo-swr": "closed", "origin of slow": "closed"}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server: FakeStack) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_each_namespace_gets_the_ttl_the_stack_says_sending_the_admin_token(
    fake: FakeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.token = "s3cret"
    assert check_stack(url(fake), ["demo", "slow"], None, "s3cret") == {"demo": 5.0, "slow": 120.0}
    assert fake.seen_authorization == ["Bearer s3cret"]
    assert "demo: TTL 5 s (the stack's cache_ttl_seconds)" in capsys.readouterr().out


def test_without_the_admin_token_it_falls_back_to_5_s_and_says_why(
    fake: FakeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.token = "s3cret"
    assert check_stack(url(fake), ["demo"], None, None) == {"demo": 5.0}
    out = capsys.readouterr().out
    assert "answered 401 (needs the admin token: set ADMIN_TOKEN)" in out and "pass --ttl" in out, out
    assert check_stack(url(fake), ["demo"], 30.0, None) == {"demo": 30.0}  # --ttl given: taken as is


def test_a_ttl_given_that_disagrees_with_the_stack_is_kept_with_a_warning(
    fake: FakeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_stack(url(fake), ["demo"], 30.0, None) == {"demo": 30.0}
    assert "--ttl 30 s, but the stack's cache_ttl_seconds is 5 s" in capsys.readouterr().out


def test_an_open_breaker_of_another_origin_does_not_stop_the_run(fake: FakeStack) -> None:
    fake.breakers["origin of slow"] = "open"
    assert check_stack(url(fake), ["demo"], None, None) == {"demo": 5.0}


def test_python_m_loadtest_refuses_in_one_line_while_the_origins_breaker_is_open(fake: FakeStack) -> None:
    fake.breakers["origin of demo, demo-swr"] = "open"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", "--url", url(fake), "--duration", "1", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "circuit breaker of the origin of demo, demo-swr is open" in lines[0], proc.stderr
