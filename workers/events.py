"""Task events in batches, whatever the pool.

While a monitor asks for them (Flower does, every few seconds), a worker sends three task events
per refresh: received, started, succeeded. Celery's dispatcher publishes each alone, except under
the prefork pool's event loop, where it already buffers the "task" group and publishes it as one
`task.multi` message; its own comment says gevent "should actually buffer" too. Alone, those
publishes were a fifth of the gevent worker's CPU with Flower running (py-spy, a cold burst on
`make run`'s stack, 2026-12-03), and the default stack runs Flower.

This consumer step turns the same buffering on for the pools without an event loop (gevent,
threads): task events wait in the dispatcher's buffer until EVENT_BATCH of them are there or
FLUSH_SECONDS have passed, then go out as one `task.multi` message, which Celery's event
receiver (Flower's too) unpacks into the same events in the same order, each with its own
timestamp and clock. Worker events (heartbeats, online, offline) are not buffered. A monitor sees
a task's state change at most FLUSH_SECONDS later.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

log = logging.getLogger("herdless.worker")

EVENT_BATCH = 96
FLUSH_SECONDS = 0.25


class BufferedTaskEvents(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def start(self, c: Any) -> None:
        # Run again after every reconnection, on the dispatcher the Events step just made.
        dispatcher = c.event_dispatcher
        if dispatcher is None or c.hub is not None:  # the event loop buffers already
            return
        dispatcher.buffer_group = frozenset({"task"})
        dispatcher.buffer_limit = EVENT_BATCH
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_every, args=(c,), name="task-events", daemon=True)
            self._flusher.start()

    def _flush_every(self, c: Any) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self._flush(c)

    @staticmethod
    def _flush(c: Any) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is None or not dispatcher._group_buffer.get("task"):
            return
        try:
            dispatcher.flush(errors=False)
        except Exception:  # noqa: BLE001 - the broker blinked: the events stay buffered for the next flush
            log.warning("could not publish the buffered task events; retrying")

    def stop(self, c: Any) -> None:
        self._flush(c)

    def shutdown(self, c: Any) -> None:
        self._stop.set()
        self._flush(c)
