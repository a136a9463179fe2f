"""A private redis-server for a stack: a free loopback port, nothing persisted."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

from launcher.processes import LaunchError, Process, free_port, port_open, wait_until


def redis_server_argv(
    port: int,
    workdir: Path,
    logfile: str = "",
    password: str | None = None,
    extra: list[str] | None = None,
    binary: str | None = None,
) -> list[str]:
    """redis-server (or the `binary` given) on 127.0.0.1:port that saves nothing; logfile "" logs
    to its stdout."""
    binary = binary or shutil.which("redis-server")
    if binary is None:
        raise LaunchError("redis-server is not installed (make system-deps installs it)")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir), "--logfile", logfile, *(extra or [])]
    if password:
        argv += ["--requirepass", password]
    return argv


class RedisServer:
    """A private redis-server on a free port (or a given one), its log in workdir/redis.log."""

    def __init__(
        self, workdir: Path, port: int | None = None, password: str | None = None, extra: list[str] | None = None
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.extra = extra or []
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        """Start it (again, on the same port, after a stop) and wait until it accepts connections."""
        argv = redis_server_argv(self.port, self.workdir, "", self.password, self.extra)
        self.process = Process("redis", argv, {}, self.workdir)
        wait_until(lambda: port_open(self.port), 10, f"redis-server on {self.port}", process=self.process)
        return self

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL by default: it persists nothing, and a test's Redis needs no goodbye."""
        if self.process is not None:
            self.process.stop(sig, grace=10)
        self.process = None

    def client(self, **kwargs: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)
