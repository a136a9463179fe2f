"""The proxy's HTTP client against a real socket server that misbehaves on purpose."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from shared.namespaces import build_namespace
from shared.proxy_origin import ProxyOrigin
from shared.settings import Settings


class RawOrigin:
    """A hand-written HTTP/1.1 origin on a loopback port: each connection is served by
    `_connection` on a thread of its own, until `close`."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class HangUpOrigin(RawOrigin):
    """Answers the first request of every connection (keep-alive); takes the second one and
    hangs up without an answer, as an origin that crashed while processing it would."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._lock = threading.Lock()
        super().__init__()

    def _connection(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            for served in range(2):
                line = stream.readline()
                if not line:
                    return
                length = 0
                while (header := stream.readline()) not in (b"\r\n", b""):
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                stream.read(length)
                with self._lock:
                    self.received.append(line.split(b" ")[0].decode())
                if served == 1:
                    return  # took it, no answer
                conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture
def hang_up() -> Iterator[HangUpOrigin]:
    origin = HangUpOrigin()
    yield origin
    origin.close()


def test_a_post_the_origin_took_and_hung_up_on_is_never_sent_twice(hang_up: HangUpOrigin) -> None:
    ns = build_namespace("p", {"proxy": f"http://127.0.0.1:{hang_up.port}", "mount": "/p"}, Settings())
    origin = ProxyOrigin(ns, 1024)
    try:
        assert origin.request("GET", "/a", ()).status == 201  # leaves a kept-alive connection idle
        answer = origin.request("POST", "/order", (), b"{}")
        assert answer.status == 201
        assert hang_up.received == ["GET", "POST"]  # the POST once, on a connection of its own
    finally:
        origin.close()


class EarlyHintsOrigin(RawOrigin):
    """Answers every request with a 103 Early Hints, then the final answer naming its path."""

    def _connection(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while line := stream.readline():
                while stream.readline() not in (b"\r\n", b""):
                    pass
                path = line.split(b" ")[1]
                conn.sendall(
                    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Path: %s\r\n\r\n%s" % (len(path), path, path)
                )


def test_an_interim_103_answer_is_skipped_and_never_mistaken_for_the_next_requests() -> None:
    early = EarlyHintsOrigin()
    ns = build_namespace("p", {"proxy": f"http://127.0.0.1:{early.port}", "mount": "/p"}, Settings())
    origin = ProxyOrigin(ns, 1024)
    try:
        for path in ("/a", "/b", "/c"):  # one kept-alive connection
            answer = origin.request("GET", path, ())
            assert (answer.status, answer.body) == (200, path.encode())
    finally:
        origin.close()
        early.close()
