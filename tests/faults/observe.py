"""What the fault and security tests observe: Prometheus samples, raw HTTP, Redis command counts."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from shared.tasks import requests_of
from tests.stack import BROKER_LISTS, Stack, metric


def worker_metric(stack: Stack, name: str, worker: str | None = None, **labels: str) -> float:
    """A metric summed over every running worker's /metrics (or one worker's)."""
    total = 0.0
    for wname, port in stack.worker_metrics_ports.items():
        if worker is not None and wname != worker:
            continue
        proc = stack.procs.get(wname)
        if proc is None or not proc.alive():
            continue
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        total += metric(text, name, **labels)
    return total


def queued_refreshes(redis: Any) -> list[tuple[str, datetime | None]]:
    """(key, expires) of every refresh waiting in the Redis broker's priority lists, one per key
    whether its message carries one key or several (shared/admitbatch.py)."""
    found = []
    for name in BROKER_LISTS:
        for raw in redis.lrange(name, 0, -1):
            envelope = json.loads(raw)
            body = envelope["body"]
            if envelope["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            _, kwargs, _ = json.loads(body)
            expires = envelope["headers"].get("expires")
            moment = datetime.fromisoformat(expires) if expires else None
            found += [(r.key, moment) for r in requests_of(envelope["headers"]["task"], kwargs)]
    return found


def web_metric(stack: Stack, name: str, **labels: str) -> float:
    return metric(requests.get(stack.web_url + "/metrics", timeout=5).text, name, **labels)


def raw_request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, timeout: float = 15
) -> tuple[int, dict[str, str], bytes]:
    """Send a path byte-for-byte (requests would re-encode or normalise it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def command_calls(client: Any, command: str) -> int:
    """How many times Redis ran `command` (INFO commandstats), e.g. 'evalsha'."""
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def assert_json_error(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:200])
    payload = json.loads(body)
    assert isinstance(payload, dict) and set(payload) >= {"error", "detail"}, payload
    assert "Traceback" not in body.decode("utf-8", "replace")
    return payload


@dataclass
class Sample:
    at: float  # monotonic time the request was sent
    elapsed: float
    status: int  # 0: no HTTP answer (connection error or client timeout)
    body: bytes
    headers: dict[str, str]


@dataclass
class TrafficLoop:
    """A client that keeps requesting some URLs in a background thread and records what it saw."""

    urls: list[str]
    timeout: float = 5.0
    pause: float = 0.02
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TrafficLoop:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        session = requests.Session()
        try:
            self._loop(session)
        finally:
            session.close()  # an idle keep-alive connection would hold up gunicorn's graceful stop

    def _loop(self, session: requests.Session) -> None:
        i = 0
        while not self._stop.is_set():
            url = self.urls[i % len(self.urls)]
            i += 1
            t0 = time.monotonic()
            try:
                r = session.get(url, timeout=self.timeout)
                sample = Sample(t0, time.monotonic() - t0, r.status_code, r.content, dict(r.headers))
            except requests.RequestException:
                sample = Sample(t0, time.monotonic() - t0, 0, b"", {})
                session.close()
            self.samples.append(sample)
            self._stop.wait(self.pause)

    def since(self, t: float) -> list[Sample]:
        return [s for s in list(self.samples) if s.at >= t]


def read_logs(stack: Stack) -> str:
    """Every log file the stack's processes wrote (and its private Redis's log)."""
    texts = [p.read_text(errors="replace") for p in Path(stack.logdir).glob("*.log")]
    redis_log = Path(stack.redis.workdir) / "redis.log"
    if redis_log.exists():
        texts.append(redis_log.read_text(errors="replace"))
    return "\n".join(texts)
