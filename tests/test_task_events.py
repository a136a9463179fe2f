"""Task events under the gevent pool go out in batches (workers/events.py), and a monitor's
receiver still gets every refresh's received, started and succeeded events, in order."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from celery import Celery

from shared.settings import Settings
from shared.tasks import celery_config
from tests.stack import Stack, wait_until

STACK_NAMESPACES = """
[namespaces.demo]
origin = "${ORIGIN_BASE_URL}/items/{key}"
"""
# A message per key (REFRESH_BATCH_MAX=1): each refresh its own task, whose events are counted.
STACK_ENV = {"WORKER_POOL": "gevent", "ORIGIN_LATENCY_MS": "50", "REFRESH_BATCH_MAX": "1"}

KEYS = 40


class Monitor:
    """A Celery event receiver, as Flower runs one, counting the messages the events came in."""

    def __init__(self, stack: Stack) -> None:
        self.app = Celery("events-monitor")
        self.app.conf.update(celery_config(Settings(redis_url=stack.redis_url)))
        self.events: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.shown: dict[str, str] = {}  # uuid -> the args Flower shows (namespace/'key')
        self.messages = 0
        self.task_events = 0
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._receiver: Any = None

    def _run(self) -> None:
        monitor = self

        class Counting(self.app.events.Receiver):  # type: ignore[name-defined,misc]
            def _receive(self, body: Any, message: Any, **kwargs: Any) -> None:
                monitor.messages += 1
                super()._receive(body, message, **kwargs)

        def on_task(event: dict[str, Any]) -> None:
            self.task_events += 1
            self.events[event["uuid"]].append((event["clock"], event["type"]))
            if event["type"] == "task-received":
                self.shown[event["uuid"]] = str(event.get("args"))

        with self.app.connection_for_read() as conn:
            self._receiver = Counting(
                conn,
                handlers={
                    "task-received": on_task,
                    "task-started": on_task,
                    "task-succeeded": on_task,
                    "task-failed": on_task,
                },
            )
            self.connected.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        assert self.connected.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)
        self.app.close()


def test_a_monitor_gets_every_refreshs_three_events_in_order_in_fewer_messages(stack: Stack) -> None:
    with Monitor(stack) as monitor:
        # Workers send task events once a monitor asks (as Flower does, at start and every few s).
        def events_on() -> bool:
            monitor.app.control.enable_events()
            return stack.get("demo", f"probe-{monitor.task_events}").status_code == 200 and bool(monitor.events)

        wait_until(events_on, 20, "the worker sends task events", interval=0.5)
        messages_before = monitor.messages

        def ours() -> dict[str, list[tuple[int, str]]]:
            return {u: e for u, e in monitor.events.items() if "evt-" in monitor.shown.get(u, "")}

        answers: list[int] = []
        readers = [
            threading.Thread(target=lambda i=i: answers.append(stack.get("demo", f"evt-{i}").status_code))
            for i in range(KEYS)
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(30)
        assert answers == [200] * KEYS

        def all_succeeded() -> bool:
            new = ours()
            return len(new) >= KEYS and all(any(t == "task-succeeded" for _, t in e) for e in new.values())

        wait_until(all_succeeded, 15, "a task-succeeded event for every refresh")
    new = {u: sorted(e) for u, e in ours().items()}
    assert len(new) == KEYS
    for uuid, events in new.items():
        assert [t for _, t in events] == ["task-received", "task-started", "task-succeeded"], (uuid, events)
    # 3 events per refresh, 120 in all; alone they would have come in 120 messages. The count
    # includes the probes' late events and worker heartbeats.
    messages = monitor.messages - messages_before
    assert messages < KEYS, messages
