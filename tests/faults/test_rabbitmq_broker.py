"""RabbitMQ as the broker (a private vhost on the shared server): a cold herd still costs one call."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shared.keys import DEFAULT_KEYSPACE
from tests.faults.observe import metric
from tests.stack import cold_herd, port_open, stack_for, wait_until

NAMESPACES = """
[namespaces.herd]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60

[namespaces.swr]
strategy = "swr"
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 1
"""
HERD = 90


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def vhost() -> Iterator[str]:
    """A vhost of our own, so that nothing else on the server shares the `herdless` queue."""
    if not port_open(5672) or not shutil.which("rabbitmqctl"):
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672 (or rabbitmqctl is missing)")
    name = f"herdless-test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def test_a_cold_herd_with_a_rabbitmq_broker_costs_one_origin_call(tmp_path: Path, vhost: str) -> None:
    env = {
        "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "ORIGIN_LATENCY_MS": "150",
    }
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        assert "amqp://guest:**@127.0.0.1:5672/" + vhost in stack.procs["w1"].output()
        keys = [f"rabbit-{i}" for i in range(3)]
        results = cold_herd(stack, "herd", keys, HERD)
        assert {status for _, status, _ in results} == {200}, [r for r in results if r[1] != 200][:3]
        per_key = stack.origin_stats()["per_key"]
        assert all(per_key[k] == 1 for k in keys), per_key
        for key in keys:
            assert len({body for k, _, body in results if k == key}) == 1

        # Stale refreshes (a lower priority) flow too, and readiness checks the AMQP broker.
        first = stack.get("swr", "rabbit-stale").json()
        wait_until(lambda: stack.get("swr", "rabbit-stale").json()["count"] > first["count"], 10, "a stale refresh")
        ready = requests.get(stack.web_url + "/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok"

        queues = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "arguments", "messages")
        assert DEFAULT_KEYSPACE.queue in queues and "x-max-priority" in queues, queues
        depth = requests.get(stack.worker_metrics_url, timeout=5).text
        assert metric(depth, "herdless_queue_depth", queue=DEFAULT_KEYSPACE.queue) == 0
        assert "herdless_queue_depth{" in depth
