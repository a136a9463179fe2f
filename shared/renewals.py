"""Lease renewal for every refresh a worker process runs, by one thread (a greenlet under gevent).

A run's lease (and, while it holds one, its origin slot) is extended at a third of the lease
TTL for as long as the run lasts; a lease found no longer the run's (a purge, or a pause past
the lease) sets the run's `lost`. One thread per refresh did this before: most refreshes end
long before their first renewal is due, yet each paid for a thread's start and join (py-spy:
3 % of the worker's CPU). Now a run enters itself in the process's schedule and leaves it when
it ends; the one renewal thread sleeps until the earliest renewal is due.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.namespaces import Namespace
    from shared.origin_slots import OriginSlots
    from shared.store import CacheStore

log = logging.getLogger("herdless.engine")


class LeaseRenewer:
    """One run's renewals: `with LeaseRenewer(store, ns, key, run_token, slots) as renewer:`.
    `holds_slot` says whether the slot is renewed too; `lost` is set when the lease is gone."""

    def __init__(self, store: CacheStore, ns: Namespace, key: str, run_token: str, slots: OriginSlots) -> None:
        self.store, self.ns, self.key, self.token, self.slots = store, ns, key, run_token, slots
        self.lost = threading.Event()
        self.holds_slot = False
        self.interval = store.settings.lease_ttl_seconds / 3
        self.due = 0.0

    def renew(self) -> bool:
        """One renewal; False once the lease is no longer this run's (it stops being renewed)."""
        try:
            if self.holds_slot:
                self.slots.renew(self.token, self.store.lease_ttl_ms)
            if not self.store.renew_lease(self.ns, self.key, self.token):
                self.lost.set()
                return False
        except Exception:  # noqa: BLE001 - Redis blinked; the next tick tries again
            log.warning("lease renewal failed for namespace %s", self.ns.name)
        return True

    def __enter__(self) -> LeaseRenewer:
        self.due = time.monotonic() + self.interval
        RENEWALS.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        RENEWALS.remove(self)


class Renewals:
    """The process's schedule of running refreshes, and the thread that renews them when due."""

    def __init__(self) -> None:
        self._runs: dict[int, LeaseRenewer] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, run: LeaseRenewer) -> None:
        with self._wake:
            self._runs[id(run)] = run
            if self._thread is None or self._pid != os.getpid():  # none yet, or forked since
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="lease-renewals", daemon=True)
                self._thread.start()
            # A new run is due after every run already scheduled (one interval for all): the
            # thread's sleep stays right; it is only woken when it had nothing to wait for.
            if len(self._runs) == 1:
                self._wake.notify()

    def remove(self, run: LeaseRenewer) -> None:
        with self._wake:
            self._runs.pop(id(run), None)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._runs:
                    self._wake.wait()
                now = time.monotonic()
                due = [run for run in self._runs.values() if run.due <= now]
                if not due:
                    self._wake.wait(min(run.due for run in self._runs.values()) - now)
                    continue
            for run in due:  # outside the lock: a renewal is a round trip
                if id(run) not in self._runs:
                    continue  # ended meanwhile
                run.due = time.monotonic() + run.interval
                if not run.renew():
                    self.remove(run)


# One schedule per process (a forked pool process starts its own thread on first use).
RENEWALS = Renewals()
