"""A web process's read path for tests that drive it directly against a real redis-server: its
refresh queue is a callable of the test's, Redis health is a PING, admission is open."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

from shared.admission import Admission
from shared.coldwait import ColdWaitHub
from shared.degraded import RedisHealth
from shared.namespaces import Namespace
from shared.readpath import NoNearCache, ReadPath, SendRefresh
from shared.replies import ReadResult
from shared.settings import Settings
from shared.store import CacheStore, Fence, new_token


class CountedReads(CacheStore):
    """A CacheStore that counts its READs, each `delay` seconds slower (a loaded Redis)."""

    def __init__(self, *args: Any, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0
        self.delay = delay

    def read(self, ns: Namespace, key: str, token: str) -> ReadResult:
        self.reads += 1
        if self.delay:
            time.sleep(self.delay)
        return super().read(ns, key, token)


def read_path_for(
    settings: Settings,
    store: CacheStore,
    send: SendRefresh,
    *,
    waiter: ColdWaitHub | None = None,
    near_cache: Any = None,
) -> ReadPath:
    """A ReadPath whose refreshes go to `send` (a batch sends one at a time); `waiter`: the cold
    waiters' hub (default: one that is never started); `near_cache` default: none."""
    return ReadPath(
        settings,
        store,
        send_refresh=send,
        open_batch=lambda: nullcontext(send),
        waiter=waiter or ColdWaitHub(lambda: store.redis, settings.max_cold_waiters),
        near_cache=NoNearCache() if near_cache is None else near_cache,
        health=RedisHealth(store.redis.ping),
        admission=Admission(None),
    )


def store_fresh(store: CacheStore, ns: Namespace, key: str, value: bytes = b"v") -> None:
    """Store a fresh value of `key` as a refresh would: lease, claim, fenced write."""
    token = new_token()
    assert store.take_lease(ns, key, token)
    run = store.claim(ns, key, token)
    assert run is not None
    now = store.now_ms()
    assert store.fenced_write(ns, key, Fence(run, now, now), value=value, content_type="text/plain").written
