"""Private stacks for the benches: launcher's stack with several web nodes and its CPU bill, and nginx.

The processes are started and stopped by launcher (shared with `make run` and the tests): free
loopback ports, a process group each, logs in the stack's directory, SIGTERM then SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil

from launcher.processes import LaunchError, Process, free_port, port_open, wait_until
from launcher.stack import PrivateStack


class LocalStack(PrivateStack):
    """redis-server + demo origin + one Celery worker + `web_nodes` gunicorn masters on that Redis.

    with LocalStack(env={"WORKER_POOL": "gevent"}) as stack:
        stack.web_urls[0], stack.origin_url, stack.metrics_urls
    """

    def __init__(self, env: dict[str, str] | None = None, web_nodes: int = 1, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        directory = Path(workdir or tempfile.mkdtemp(prefix="herdless-bench-"))
        super().__init__(directory, env, first_worker="worker")
        for i in range(web_nodes):
            self.web_ports[f"web{i + 1}"] = free_port()
        self.defaults = {
            "ORIGIN_HOST": "127.0.0.1",
            "WORKER_METRICS_PORT": str(self.worker_metrics_ports["worker"]),
        }

    @property
    def redis_port(self) -> int:
        return self.redis.port

    @property
    def web_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.web_ports.values()]

    @property
    def worker_metrics_url(self) -> str:
        return self.metrics_url_of("worker")

    @property
    def metrics_urls(self) -> list[str]:
        return [self.worker_metrics_url, self.web_urls[0] + "/metrics"]

    def env(self, **more: str) -> dict[str, str]:
        return self.environment(**more)

    def start(self) -> LocalStack:
        self.start_redis()
        self.start_origin()
        self.start_worker("worker", hostname="bench@%h")
        for name in self.web_ports:
            self.start_web(name, wait=False)
        for name in self.web_ports:
            self.wait_web_ready(name)
        self.wait_worker_ready("worker")
        return self

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) each role (redis, origin, worker, web) has used so far, its
        child processes included: what a run costs, beside what it achieved."""
        used: dict[str, float] = {}
        procs = [self.redis.process, *self.procs.values()]
        for proc in procs:
            if proc is None:
                continue
            role = proc.name.rstrip("0123456789")
            try:
                root = psutil.Process(proc.pid)
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

    def restart_redis(self, down_seconds: float = 0.0) -> None:
        """Kill redis-server (SIGKILL; it persists nothing) and, `down_seconds` later, start an empty
        one on the same port: a Redis that lost its memory, with web and worker reconnecting on their
        own (and answering from memory meanwhile)."""
        self.redis.stop(signal.SIGKILL)
        time.sleep(down_seconds)
        self.redis.start()

    def stop(self, kill_workers: bool = False) -> None:
        super().stop(kill_workers)
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
        wait_until(lambda: port_open(self.port), 10, f"nginx on {self.port}", process=self.proc)
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
