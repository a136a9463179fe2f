"""Real processes for tests: a private redis-server, the demo origin, gunicorn and Celery workers.

The launching is launcher's (shared with `make run` and the load tester); this module adds what
tests ask of a stack, and keeps the names tests import (free_port, wait_until, Proc...)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from launcher.processes import ROOT, Process, free_port, port_open, wait_until
from launcher.redis_server import RedisServer
from launcher.stack import PrivateStack
from shared.keys import DEFAULT_KEYSPACE
from shared.tasks import broker_lists

__all__ = [
    "BROKER_LISTS",
    "PYTHON",
    "ROOT",
    "Proc",
    "RedisServer",
    "Stack",
    "UNACKED",
    "cold_herd",
    "free_port",
    "metric",
    "port_open",
    "stack_for",
    "wait_until",
]

PYTHON = sys.executable
# Where a stack with the default HERDLESS_PREFIX keeps its refresh messages on its Redis broker:
# the priority lists, and kombu's hash of messages delivered but not acknowledged yet.
BROKER_LISTS = tuple(broker_lists(DEFAULT_KEYSPACE))
UNACKED = DEFAULT_KEYSPACE.broker_keyprefix + "unacked"
Proc = Process  # a child process with its output in <logdir>/<name>.log (read it when a test fails)


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


class Stack(PrivateStack):
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
        db: int = 0,
    ) -> None:
        defaults = {"ORIGIN_LATENCY_MS": "100"}
        if worker_concurrency is not None:
            defaults["WORKER_CONCURRENCY"] = str(worker_concurrency)
        super().__init__(tmp_path, env, redis=redis, defaults=defaults, db=db)
        self.tmp = self.dir
        self.web_ports["web"] = free_port()
        self.n_workers = workers
        self.starts_web = start_web

    # -- addresses -----------------------------------------------------------------------
    @property
    def web_port(self) -> int:
        return self.web_ports["web"]

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def worker_metrics_url(self) -> str:
        """Metrics of the first worker started."""
        return self.metrics_url_of(self.worker_names[0] if self.worker_names else self.first_worker)

    def url(self, namespace: str, key: str) -> str:
        from shared.origin import encode_key_for_path

        return f"{self.web_url}/v1/cache/{namespace}/{encode_key_for_path(key)}"

    @property
    def env(self) -> dict[str, str]:
        return self.environment()

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
        self.start_redis()
        self.start_origin()
        for i in range(self.n_workers):
            self.start_worker(f"w{i + 1}")
        if self.starts_web:
            self.start_web_tier()
        for name in self.worker_names:
            self.wait_worker_ready(name)

    def start_web_tier(self, extra_env: dict[str, str] | None = None) -> None:
        self.start_web("web", extra_env)

    def stop_worker(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.procs[name].stop(sig)

    def stop(self, kill_workers: bool | None = None) -> None:
        """Tear down: nothing of a finished test is worth a graceful stop, so workers whose broker
        is this stack's private Redis are killed outright (a test that needs a graceful stop asks
        for it with stop_worker). A worker on another broker (RabbitMQ) stops gracefully, so that
        it leaves no unacknowledged message behind for the next stack."""
        if kill_workers is None:
            kill_workers = self.own_redis and not self.env.get("CELERY_BROKER_URL")
        super().stop(kill_workers)

    def dump_logs(self) -> None:
        for proc in self.procs.values():
            sys.stderr.write(f"\n----- {proc.name} log (tail) -----\n{proc.tail(4000)}\n")

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
    test defaults and `options` for Stack (workers, redis, db, worker_concurrency, start_web)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "namespaces.toml"
    path.write_text(namespaces)
    with Stack(tmp, env={"NAMESPACES_FILE": str(path), **(env or {})}, **options) as stack:
        yield stack
