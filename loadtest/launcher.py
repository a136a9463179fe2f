"""Starts and stops a private stack for a bench: redis-server, the demo origin, web nodes, one worker, nginx.

Every process gets a free loopback port and its own process group, logs into the
stack's directory, and is stopped (SIGTERM, then SIGKILL) when the stack stops.
The tests' harness (tests/stack.py) does the same for tests; this one needs no
test dependencies and can run several gunicorn masters on one Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


class LaunchError(RuntimeError):
    pass


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and not proc.alive():
            raise LaunchError(f"{what}: process exited; log tail:\n{proc.tail()}")
        time.sleep(0.1)
    raise LaunchError(f"{what}: not ready after {timeout:g}s" + (f"; log tail:\n{proc.tail()}" if proc else ""))


class Process:
    """A child in its own process group, output to <logdir>/<name>.log."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        except ProcessLookupError:
            pass


class LocalStack:
    """redis-server + demo origin + one Celery worker + `web_nodes` gunicorn masters on that Redis.

    with LocalStack(env={"WORKER_POOL": "gevent"}) as stack:
        stack.web_urls[0], stack.origin_url, stack.metrics_urls
    """

    def __init__(self, env: dict[str, str] | None = None, web_nodes: int = 1, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="herdless-bench-"))
        self.logdir = self.dir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        self.origin_port = free_port()
        self.worker_metrics_port = free_port()
        self.web_ports = [free_port() for _ in range(web_nodes)]
        self.extra_env = dict(env or {})
        self.procs: list[Process] = []
        self._redis_args: list[str] = []

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    @property
    def web_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.web_ports]

    @property
    def worker_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.worker_metrics_port}/metrics"

    @property
    def metrics_urls(self) -> list[str]:
        return [self.worker_metrics_url, self.web_urls[0] + "/metrics"]

    def env(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(
            {
                "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "ORIGIN_PORT": str(self.origin_port),
                "ORIGIN_HOST": "127.0.0.1",
                "WORKER_METRICS_PORT": str(self.worker_metrics_port),
                "WORKER_METRICS_URL": self.worker_metrics_url,
                "PROMETHEUS_MULTIPROC_DIR": str(self.dir / "metrics"),
                "PYTHONUNBUFFERED": "1",
                # gevent web workers would wait out idle keep-alive clients for the whole graceful timeout
                "GUNICORN_CMD_ARGS": "--graceful-timeout 1",
            }
        )
        env.update(self.extra_env)
        env.update(more)
        return env

    def start(self) -> LocalStack:
        redis_server = shutil.which("redis-server")
        if not redis_server:
            raise LaunchError("redis-server is not installed (make system-deps installs it)")
        (self.dir / "metrics").mkdir(exist_ok=True)
        redis_dir = self.dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        redis_args = [redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
        redis_args += ["--appendonly", "no", "--dir", str(redis_dir)]
        self._redis_args = redis_args
        redis = self._spawn("redis", redis_args, self.env())
        wait_for(lambda: port_open(self.redis_port), 10, "redis-server", redis)
        origin = self._spawn("origin", [sys.executable, "-m", "demo_origin"], self.env())
        wait_for(lambda: answers(self.origin_url + "/stats"), 15, "demo origin", origin)
        worker = self._spawn("worker", [sys.executable, "-m", "workers", "--hostname", "bench@%h"], self.env())
        webs = []
        for i, port in enumerate(self.web_ports):
            args = [sys.executable, "-m", "gunicorn", "-c", "web/gunicorn.conf.py", "web.app:create_app()"]
            webs.append(self._spawn(f"web{i + 1}", args, self.env(WEB_PORT=str(port))))
        for proc, url in zip(webs, self.web_urls, strict=True):
            wait_for(lambda url=url: answers(url + "/healthz"), 60, f"web tier {url}", proc)
        wait_for(lambda: "ready." in worker.tail(100_000), 60, "worker", worker)
        return self

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) each role (redis, origin, worker, web) has used so far, its
        child processes included: what a run costs, beside what it achieved."""
        used: dict[str, float] = {}
        for proc in self.procs:
            role = proc.name.rstrip("0123456789")
            try:
                root = psutil.Process(proc.popen.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for p in tree:
                try:
                    t = p.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                used[role] = used.get(role, 0.0) + t.user + t.system
        return used

    def restart_redis(self) -> None:
        """Kill redis-server (SIGKILL; it persists nothing) and start an empty one on the same port:
        a Redis that lost its memory, with web and worker reconnecting on their own."""
        old = self.procs[0]
        assert old.name == "redis", "redis-server is the stack's first process"
        os.killpg(old.popen.pid, signal.SIGKILL)
        old.popen.wait(10)
        new = Process("redis", self._redis_args, self.env(), self.logdir)
        self.procs[0] = new
        wait_for(lambda: port_open(self.redis_port), 10, "redis-server after its restart", new)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        proc = Process(name, args, env, self.logdir)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        # web and worker first (all at once: each takes a second or more to shut down), redis last
        for proc in self.procs[1:]:
            proc.terminate()
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self._own_dir and not os.environ.get("LOADTEST_KEEP_STACK_DIR"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- nginx


def nginx_ttl(ttl: float) -> str:
    """An nginx time: whole seconds as `5s`, anything finer in milliseconds."""
    return f"{int(ttl)}s" if float(ttl).is_integer() else f"{round(ttl * 1000)}ms"


def render_nginx_conf(directory: Path, port: int, origin_port: int, ttl: float, as_root: bool = False) -> str:
    """nginx as a caching proxy before the demo origin: loopback only, everything under `directory`."""
    d = str(directory)
    user = "user root;\n" if as_root else ""  # workers must write the cache and temp dirs made by this user
    return f"""{user}worker_processes 1;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=herd:16m max_size=256m inactive=10m use_temp_path=off;
    upstream demo_origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 100000;
        location /items/ {{
            proxy_pass http://demo_origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache herd;
            proxy_cache_valid 200 {nginx_ttl(ttl)};
            proxy_cache_use_stale updating error timeout;
            proxy_cache_background_update on;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status always;
        }}
    }}
}}
"""


class NginxNode:
    """One nginx with its own cache directory, started in the foreground and stopped by its pid."""

    def __init__(self, origin_port: int, ttl: float, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="herdless-nginx-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.origin_port = origin_port
        self.ttl = ttl
        self.proc: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NginxNode:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if not binary:
            raise LaunchError("nginx is not installed (apt-get install -y nginx)")
        conf = self.dir / "nginx.conf"
        conf.write_text(render_nginx_conf(self.dir, self.port, self.origin_port, self.ttl, os.geteuid() == 0))
        args = [binary, "-e", str(self.dir / "error.log"), "-c", str(conf)]
        args += ["-g", f"daemon off; pid {self.dir}/nginx.pid;"]
        self.proc = Process("nginx", args, dict(os.environ), self.dir)
        wait_for(lambda: port_open(self.port), 10, f"nginx on {self.port}", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        if self._own_dir and not os.environ.get("LOADTEST_KEEP_STACK_DIR"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NginxNode:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
