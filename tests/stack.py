"""Real processes for tests: a private redis-server, the demo origin, gunicorn and Celery workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A port nothing listens on now, never one this process handed out before: ports are
    chosen before the processes that bind them start, and the kernel may offer a port that was
    just handed out but not bound yet again (a stack's origin and its worker's metrics server
    once got the same one)."""
    with _handed_out_lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """Poll predicate until it returns something truthy; fail naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else "")
    )


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels`.

    `name` is a sample's name as exposed (`herdless_requests_total`, `..._bucket`, `..._count`)."""
    return sum(
        (
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ),
        0.0,
    )


def cold_herd(stack: Stack, namespace: str, keys: list[str], clients: int) -> list[tuple[str, int, bytes]]:
    """`clients` concurrent GETs released at one instant, spread over `keys`: (key, status, body)."""
    barrier = threading.Barrier(clients)

    def one(i: int) -> tuple[str, int, bytes]:
        key = keys[i % len(keys)]
        barrier.wait()
        r = requests.get(stack.url(namespace, key), timeout=30)
        return key, r.status_code, r.content

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(one, range(clients)))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class RedisServer:
    """A private redis-server on a free port (or a given one), nothing persisted."""

    def __init__(
        self, workdir: Path, port: int | None = None, password: str | None = None, extra: list[str] | None = None
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make test installs it)"
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.workdir / "redis.log"),
            *self.extra,
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port), 10, f"redis-server on {self.port}")
        return self

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def client(self, **kwargs: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)


class Proc:
    """A child process with its output in a log file (read it when a test fails)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        """Signal the whole process group (a Celery worker and its pool children)."""
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
        self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float = 15) -> None:
        """Wait for an exit already asked for; SIGKILL the group past `timeout`."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(5)
        self._log.close()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Stack:
    """origin + gunicorn web + Celery worker(s), sharing one private Redis.

    with Stack(tmp_path, env={"CACHE_TTL_SECONDS": "1"}) as stack:
        requests.get(stack.url("demo", "k"))
    """

    def __init__(
        self,
        tmp_path: Path,
        env: dict[str, str] | None = None,
        *,
        workers: int = 1,
        redis: RedisServer | None = None,
        start_web: bool = True,
        worker_concurrency: int | None = None,
    ) -> None:
        self.tmp = Path(tmp_path)
        self.logdir = self.tmp / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.own_redis = redis is None
        self.redis = redis or RedisServer(self.tmp / "redis")
        self.web_port = free_port()
        self.origin_port = free_port()
        # Worker "w1" always gets this port: the web tier's status page reads it (WORKER_METRICS_URL).
        self.worker_metrics_ports: dict[str, int] = {"w1": free_port()}
        self.procs: dict[str, Proc] = {}
        self.worker_names: list[str] = []  # in the order they were first started
        self.n_workers = workers
        self.start_web = start_web
        self.worker_concurrency = worker_concurrency
        self.extra_env = env or {}

    # -- addresses -----------------------------------------------------------------------
    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def worker_metrics_url(self) -> str:
        """Metrics of the first worker started."""
        first = self.worker_names[0] if self.worker_names else "w1"
        return f"http://127.0.0.1:{self.worker_metrics_ports[first]}/metrics"

    def url(self, namespace: str, key: str) -> str:
        from shared.origin import encode_key_for_path

        return f"{self.web_url}/v1/cache/{namespace}/{encode_key_for_path(key)}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_MULTIPROC_DIR",))}
        env.update(
            {
                "REDIS_URL": self.redis.url,
                "WEB_PORT": str(self.web_port),
                "ORIGIN_PORT": str(self.origin_port),
                "ORIGIN_LATENCY_MS": "100",
                "PYTHONUNBUFFERED": "1",
                # gevent workers wait out idle keep-alive clients for the whole graceful timeout:
                # tests stop their stacks in a second instead.
                "GUNICORN_CMD_ARGS": "--graceful-timeout 1",
                "PROMETHEUS_MULTIPROC_DIR": str(self.tmp / "metrics"),
                "WORKER_METRICS_URL": f"http://127.0.0.1:{self.worker_metrics_ports['w1']}/metrics",
            }
        )
        if self.worker_concurrency is not None:
            env["WORKER_CONCURRENCY"] = str(self.worker_concurrency)
        env.update(self.extra_env)
        return env

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.dump_logs()
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.dump_logs()
        self.stop()

    def start(self) -> None:
        (self.tmp / "metrics").mkdir(exist_ok=True)
        if self.own_redis:
            self.redis.start()
        self.start_origin()
        for i in range(self.n_workers):
            self.start_worker(f"w{i + 1}")
        if self.start_web:
            self.start_web_tier()
        for name in self.worker_names:
            self.wait_worker_ready(name)

    def start_origin(self) -> None:
        self.procs["origin"] = Proc("origin", [PYTHON, "-m", "demo_origin"], self.env, self.logdir)
        wait_until(lambda: port_open(self.origin_port), 15, "demo origin")

    def start_web_tier(self, extra_env: dict[str, str] | None = None) -> None:
        env = {**self.env, **(extra_env or {})}
        self.procs["web"] = Proc(
            "web", [PYTHON, "-m", "gunicorn", "-c", "web/gunicorn.conf.py", "web.app:create_app()"], env, self.logdir
        )
        wait_until(lambda: requests.get(self.web_url + "/healthz", timeout=1).status_code == 200, 30, "web tier")

    def start_worker(
        self,
        name: str,
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        wait: bool = False,
    ) -> Proc:
        port = self.worker_metrics_ports.get(name) or free_port()
        self.worker_metrics_ports[name] = port
        env = {**self.env, "WORKER_METRICS_PORT": str(port), **(extra_env or {})}
        args = [PYTHON, "-m", "workers", "--hostname", f"{name}@%h", *(extra_args or [])]
        proc = self.procs[name] = Proc(name, args, env, self.logdir)
        if name not in self.worker_names:
            self.worker_names.append(name)
        if wait:
            self.wait_worker_ready(name)
        return proc

    def wait_worker_ready(self, name: str) -> None:
        proc = self.procs[name]
        wait_until(lambda: "ready." in proc.output() or not proc.alive(), 60, f"worker {name} ready")
        assert proc.alive(), f"worker {name} died:\n{proc.output()[-3000:]}"

    def stop_worker(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.procs[name].stop(sig)

    def stop(self) -> None:
        """Tear down: every process is told at once, then waited for. A gevent worker handles
        SIGTERM only when its consumer loop next wakes (about 4 s when idle), and nothing of a
        finished test is worth a graceful stop: workers whose broker is this stack's private
        Redis are killed outright (a test that needs a graceful stop asks for it with
        stop_worker). A worker on another broker (RabbitMQ) stops gracefully, so that it
        leaves no unacknowledged message behind for the next stack."""
        kill_workers = self.own_redis and not self.env.get("CELERY_BROKER_URL")
        procs = list(reversed(self.procs.values()))
        for proc in procs:
            worker = proc.name in self.worker_names
            try:
                proc.send(signal.SIGKILL if worker and kill_workers else signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            proc.wait_stopped()
        if self.own_redis:
            self.redis.stop()

    def dump_logs(self) -> None:
        for proc in self.procs.values():
            sys.stderr.write(f"\n----- {proc.name} log (tail) -----\n{proc.output()[-4000:]}\n")

    # -- conveniences ------------------------------------------------------------------------
    def origin_stats(self) -> dict[str, Any]:
        return requests.get(self.origin_url + "/stats", timeout=5).json()  # type: ignore[no-any-return]

    def origin_config(self, **config: Any) -> None:
        requests.put(self.origin_url + "/config", json=config, timeout=5).raise_for_status()

    def get(self, namespace: str, key: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 15)
        return requests.get(self.url(namespace, key), **kwargs)


@contextmanager
def stack_for(
    tmp: Path,
    namespaces: str,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> Iterator[Stack]:
    """A running stack that serves `namespaces` (a namespaces.toml body), with `env` on top of the
    test defaults and `options` for Stack (workers, redis, worker_concurrency, start_web)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "namespaces.toml"
    path.write_text(namespaces)
    with Stack(tmp, env={"NAMESPACES_FILE": str(path), **(env or {})}, **options) as stack:
        yield stack
