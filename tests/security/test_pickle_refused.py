"""Celery accepts JSON only: a pickled herdless.refresh pushed straight onto the broker queue is
refused unread, never executed, and the worker keeps serving."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

from kombu import Connection

from shared.keys import DEFAULT_KEYSPACE
from tests.faults.observe import worker_metric
from tests.stack import BROKER_LISTS, UNACKED, stack_for, wait_until

NAMESPACES = """
[namespaces.demo]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""


class CreatesFileWhenUnpickled:
    """Unpickling this opens (creates) `path`: proof of execution if it ever appears."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_pickled_task_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-was-executed"
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(CreatesFileWhenUnpickled(control)))
    assert control.exists(), "the payload must have a visible effect when it is unpickled"
    env = {"ORIGIN_LATENCY_MS": "10"}
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        redis = stack.redis.client()
        task_id = str(uuid.uuid4())
        kwargs = {
            "namespace": CreatesFileWhenUnpickled(marker),
            "key": "pickled",
            "token": "t",
            "reason": "miss",
            "won_at_ms": 0,
        }
        # Where the refresh queue is: the stack's own queue, under its broker key prefix.
        keys = DEFAULT_KEYSPACE
        with Connection(stack.redis_url, transport_options={"global_keyprefix": keys.broker_keyprefix}) as conn:
            producer = conn.Producer(serializer="pickle")
            producer.publish(
                ((), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}),
                exchange="",
                routing_key=keys.queue,
                headers={
                    "lang": "py",
                    "task": "herdless.refresh",
                    "id": task_id,
                    "root_id": task_id,
                    "parent_id": None,
                    "group": None,
                    "retries": 0,
                    "eta": None,
                    "expires": None,
                    "argsrepr": "()",
                    "kwargsrepr": "{...}",
                    "origin": "attacker",
                },
            )
        worker = stack.procs["w1"]
        # The worker took the message off the queue and said why it would not read it.
        wait_until(lambda: "untrusted content" in worker.output(), 15, "the worker to refuse the pickle")
        wait_until(
            lambda: redis.llen(BROKER_LISTS[0]) == 0 and redis.hlen(UNACKED) == 0, 10, "the message to be dropped"
        )
        assert not marker.exists(), "the pickled payload was executed"
        assert "application/x-python-serialize" in worker.output()
        assert worker_metric(stack, "herdless_refresh_total") == 0
        # The worker is alive and still refreshes JSON tasks.
        r = stack.get("demo", "after-the-pickle")
        assert r.status_code == 200 and r.json()["count"] == 1
        assert worker.alive()
        assert not marker.exists()
