"""What the load test reads from the stack besides responses: origin stats, queue depth, process RSS.

All calls are blocking and small; the generator runs them in a thread once a
second so they never hold up the request schedule.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_QUEUE_DEPTH = re.compile(r"^herdless_queue_depth(?:\{[^}]*\})?\s+([0-9.eE+-]+|NaN)\s*(?:\d+)?$", re.M)


@dataclass(frozen=True)
class OriginCalls:
    total: int
    prefixed: int
    per_key: dict[str, int]


class OriginProbe:
    """Reads and drives the demo origin: GET /stats, PUT /config (see the contract)."""

    def __init__(self, base_url: str, timeout: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def stats(self, prefix: str) -> OriginCalls:
        with urllib.request.urlopen(f"{self.base_url}/stats", timeout=self.timeout) as resp:
            data = json.loads(resp.read())
        per_key = {k: int(v) for k, v in (data.get("per_key") or {}).items() if k.startswith(prefix)}
        return OriginCalls(int(data.get("calls", 0)), sum(per_key.values()), per_key)

    def try_stats(self, prefix: str) -> OriginCalls | None:
        try:
            return self.stats(prefix)
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def configure(self, **settings: float) -> None:
        req = urllib.request.Request(
            f"{self.base_url}/config",
            data=json.dumps(settings).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            resp.read()


def parse_queue_depth(metrics_text: str) -> float | None:
    """Sum of every herdless_queue_depth sample in a Prometheus text page, None if absent."""
    values = [float(v) for v in _QUEUE_DEPTH.findall(metrics_text) if v != "NaN"]
    if values:
        return sum(values)
    # the gauge is declared but has no queue sample yet: nothing is queued
    return 0.0 if "# TYPE herdless_queue_depth gauge" in metrics_text else None


class QueueDepthProbe:
    """Scrapes herdless_queue_depth (summed over queues) from the first URL that serves it."""

    def __init__(self, urls: list[str], timeout: float = 1.0) -> None:
        self.urls = urls
        self.timeout = timeout

    def read(self) -> float | None:
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                    depth = parse_queue_depth(resp.read().decode("utf-8", "replace"))
            except (OSError, urllib.error.URLError):
                continue
            if depth is not None:
                return depth
        return None


# ---------------------------------------------------------------- processes


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = LISTEN
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pids_listening_on(port: int) -> set[int]:
    """Processes holding a listening socket on `port` (a gunicorn master and its workers share one)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return set()
    wanted = {f"socket:[{i}]" for i in inodes}
    found: set[int] = set()
    for pid in _pids():
        fd_dir = f"/proc/{pid}/fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(f"{fd_dir}/{fd}") in wanted:
                        found.add(pid)
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return found


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def with_descendants(pids: set[int]) -> set[int]:
    """`pids` plus every process below them (gunicorn workers, Celery prefork children)."""
    parents = {pid: parent_of(pid) for pid in _pids()}
    result = set(pids)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in result and pid not in result:
                result.add(pid)
                grew = True
    return result


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip() or "?"


def stack_processes(ports: dict[str, int], extra_pids: list[int]) -> dict[int, str]:
    """pid -> role for every process of the stack found by its listening port (plus children)."""
    roles: dict[int, str] = {}
    for role, port in ports.items():
        for pid in sorted(with_descendants(pids_listening_on(port))):
            roles.setdefault(pid, role)
    for pid in extra_pids:
        roles.setdefault(pid, "given")
    return roles
