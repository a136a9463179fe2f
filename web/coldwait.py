"""ColdMissWaiter: cold-miss requests wait here for their key's refresh to be published.

One pub/sub connection per web process serves every waiter; waiters for the same key share
one wait. A waiter registers before it re-reads the entry, and the subscription is already
live, so a "ready" published between its read and its wait is never lost. While the
subscription is down (Redis blinked) waiters fall back to re-reading on a short period.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from shared.store import READY_CHANNEL

log = logging.getLogger("herdless.web")

CONNECTED_SLICE = 1.0  # safety-net re-read period while the subscription is live
DISCONNECTED_SLICE = 0.2  # re-read period while it is not


class TooManyWaiters(Exception):
    """MAX_COLD_WAITERS requests of this process are already waiting."""


@dataclass
class _Wait:
    waiters: int = 0
    generation: int = 0
    status: str = ""


class WaitHandle:
    def __init__(self, owner: ColdMissWaiter, wait: _Wait, coalesced: bool) -> None:
        self._owner = owner
        self._wait = wait
        self.coalesced = coalesced
        self._seen = wait.generation

    def mark(self) -> None:
        """Remember the current generation: call just before re-reading the entry."""
        with self._owner._cond:
            self._seen = self._wait.generation

    def wait(self, timeout: float) -> str | None:
        """Block until a refresh of this key is published after the last mark(), or timeout.
        Returns the published status ("ready", "error") or None."""
        slice_ = CONNECTED_SLICE if self._owner.connected.is_set() else DISCONNECTED_SLICE
        deadline = time.monotonic() + min(timeout, slice_)
        with self._owner._cond:
            while self._wait.generation == self._seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._owner._cond.wait(left)
            self._seen = self._wait.generation
            return self._wait.status


class ColdMissWaiter:
    def __init__(self, client_factory: Callable[[], Any], max_waiters: int) -> None:
        self._client_factory = client_factory
        self._max_waiters = max_waiters
        self._cond = threading.Condition()
        self._waits: dict[tuple[str, str], _Wait] = {}
        self._active = 0
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()

    def start(self) -> None:
        """Subscribe now rather than on the first cold miss (call in the serving process)."""
        self._ensure_listener()

    def _ensure_listener(self) -> None:
        # Once per process, in the serving process (after gunicorn forks).
        if self._thread is not None:
            return
        with self._started:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="cold-miss-listener", daemon=True)
                self._thread.start()

    def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = None
            try:
                pubsub = self._client_factory().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(READY_CHANNEL)
                # The first get_message completes the subscribe handshake.
                pubsub.get_message(timeout=1.0)
                self.connected.set()
                backoff = 0.1
                for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._dispatch(message["data"])
            except Exception as exc:  # noqa: BLE001 - reconnect whatever happened
                log.warning("cold-miss subscription lost (%s); reconnecting", type(exc).__name__)
            finally:
                self.connected.clear()
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _dispatch(self, data: bytes | str) -> None:
        try:
            event = json.loads(data)
            target = (str(event["ns"]), str(event["key"]))
            status = str(event.get("status", "ready"))
        except (ValueError, KeyError, TypeError):
            return
        with self._cond:
            wait = self._waits.get(target)
            if wait is not None:
                wait.generation += 1
                wait.status = status
                self._cond.notify_all()

    @contextmanager
    def join(self, namespace: str, key: str) -> Iterator[WaitHandle]:
        """Register as a waiter for (namespace, key); raises TooManyWaiters past the limit."""
        self._ensure_listener()
        target = (namespace, key)
        with self._cond:
            if self._active >= self._max_waiters:
                raise TooManyWaiters()
            self._active += 1
            wait = self._waits.get(target)
            coalesced = wait is not None
            if wait is None:
                wait = self._waits[target] = _Wait()
            wait.waiters += 1
        try:
            yield WaitHandle(self, wait, coalesced)
        finally:
            with self._cond:
                self._active -= 1
                wait.waiters -= 1
                if wait.waiters == 0 and self._waits.get(target) is wait:
                    del self._waits[target]

    @property
    def active(self) -> int:
        return self._active
