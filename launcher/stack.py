"""A private stack on free loopback ports: redis-server, the demo origin, gunicorn web tiers, Celery workers.

The tests (tests/stack.py) and the load tester's benches (loadtest/launcher.py) build on it; each
process runs the Procfile's command of its role, logs to <directory>/logs/<name>.log and leads a
process group of its own, so that a stop reaches its children too.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path

from launcher import roles
from launcher.processes import Process, free_port, http_ok, stop_all, wait_until
from launcher.redis_server import RedisServer


class PrivateStack:
    """Processes started one by one, by name, into `procs`; `redis` is this stack's own unless
    one was given (then it is left running on stop). `db`: the database of it the stack uses, so
    that stacks may share one redis-server as deployments do."""

    def __init__(
        self,
        directory: Path,
        env: Mapping[str, str] | None = None,
        *,
        redis: RedisServer | None = None,
        first_worker: str = "w1",
        defaults: Mapping[str, str] | None = None,
        db: int = 0,
    ) -> None:
        self.dir = Path(directory)
        self.logdir = self.dir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.metrics_dir = self.dir / "metrics"
        self.metrics_dir.mkdir(exist_ok=True)
        self.own_redis = redis is None
        self.redis = redis or RedisServer(self.dir / "redis")
        self.db = db
        self.origin_port = free_port()
        self.web_ports: dict[str, int] = {}
        # The first worker's port is chosen now: the web tier's status page reads it (WORKER_METRICS_URL).
        self.first_worker = first_worker
        self.worker_metrics_ports: dict[str, int] = {first_worker: free_port()}
        self.procs: dict[str, Process] = {}
        self.worker_names: list[str] = []  # in the order they were first started
        self.defaults = dict(defaults or {})
        self.extra_env = dict(env or {})

    @property
    def redis_url(self) -> str:
        return self.redis.url_for(self.db)

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    def metrics_url_of(self, worker: str) -> str:
        return f"http://127.0.0.1:{self.worker_metrics_ports[worker]}/metrics"

    def environment(self, **more: str) -> dict[str, str]:
        """What every process gets: this process's environment (less a metrics directory of its
        own), the stack's addresses, then the subclass's defaults, the stack's `env`, and `more`."""
        env = roles.environment({k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "ORIGIN_PORT": str(self.origin_port),
                "WORKER_METRICS_URL": self.metrics_url_of(self.first_worker),
                # Web and worker each make their own subdirectory in it.
                "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
                # gevent workers wait out idle keep-alive clients for the whole graceful timeout:
                # a private stack stops in a second instead.
                "GUNICORN_CMD_ARGS": "--graceful-timeout 1",
            }
        )
        if self.web_ports:
            env["WEB_PORT"] = str(next(iter(self.web_ports.values())))
        env.update(self.defaults)
        env.update(self.extra_env)
        env.update(more)
        return env

    # -- starting ----------------------------------------------------------------------------
    def start_redis(self) -> None:
        if self.own_redis:
            self.redis.start()

    def start_origin(self) -> Process:
        proc = self.procs["origin"] = Process("origin", roles.command("origin"), self.environment(), self.logdir)
        wait_until(lambda: http_ok(self.origin_url + "/stats"), 15, "demo origin", process=proc)
        return proc

    def start_web(self, name: str = "web", extra_env: Mapping[str, str] | None = None, wait: bool = True) -> Process:
        port = self.web_ports.get(name) or free_port()
        self.web_ports[name] = port
        env = {**self.environment(WEB_PORT=str(port)), **(extra_env or {})}
        proc = self.procs[name] = Process(name, roles.command("web"), env, self.logdir)
        if wait:
            self.wait_web_ready(name)
        return proc

    def wait_web_ready(self, name: str) -> None:
        url = f"http://127.0.0.1:{self.web_ports[name]}/healthz"
        wait_until(lambda: http_ok(url), 60, f"web tier {name} at {url}", process=self.procs[name])

    def start_worker(
        self,
        name: str,
        extra_env: Mapping[str, str] | None = None,
        extra_args: list[str] | None = None,
        wait: bool = False,
        hostname: str | None = None,
    ) -> Process:
        port = self.worker_metrics_ports.get(name) or free_port()
        self.worker_metrics_ports[name] = port
        env = {**self.environment(WORKER_METRICS_PORT=str(port)), **(extra_env or {})}
        argv = roles.command("worker", "--hostname", hostname or f"{name}@%h", *(extra_args or []))
        proc = self.procs[name] = Process(name, argv, env, self.logdir)
        if name not in self.worker_names:
            self.worker_names.append(name)
        if wait:
            self.wait_worker_ready(name)
        return proc

    def wait_worker_ready(self, name: str) -> None:
        proc = self.procs[name]
        wait_until(lambda: "ready." in proc.output(), 60, f"worker {name} ready", process=proc)

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, kill_workers: bool = False) -> None:
        """Every process is told at once, last started first, then waited for; the private Redis
        goes last. `kill_workers`: SIGKILL the workers instead of SIGTERM, for when nothing of
        theirs is worth a graceful stop (an idle gevent worker acts on SIGTERM only after ~4 s)."""

        def signal_for(proc: Process) -> int:
            return signal.SIGKILL if kill_workers and proc.name in self.worker_names else signal.SIGTERM

        stop_all(list(reversed(self.procs.values())), signal_for=signal_for)
        if self.own_redis:
            self.redis.stop()
