"""What a web process keeps of proxied responses it has read: bounded in bytes, not only in count."""

from __future__ import annotations

import gc
import tracemalloc
from contextlib import nullcontext

from shared.admission import Admission
from shared.coldwait import ColdWaitHub
from shared.degraded import RedisHealth
from shared.proxy_read import ProxyReadPath
from shared.proxy_store import Envelope, PendingRequests
from shared.readpath import NoNearCache
from shared.settings import Settings
from shared.store import CacheStore
from shared.tasks import RefreshRequest


def _send(_: RefreshRequest) -> None:
    raise AssertionError("nothing is enqueued here")


def test_decoded_responses_kept_for_reuse_are_bounded_in_bytes(settings: Settings, store: CacheStore) -> None:
    read_path = ProxyReadPath(
        settings,
        store,
        pending=PendingRequests(),
        send_refresh=_send,
        open_batch=lambda: nullcontext(_send),
        waiter=ColdWaitHub(lambda: store.redis, settings.max_cold_waiters),
        near_cache=NoNearCache(),
        health=RedisHealth(store.redis.ping),
        admission=Admission(None),
    )
    body = b"x" * (512 * 1024)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100):  # 100 distinct responses of 512 KiB, each read once (from Redis)
            value = Envelope("response", f"/r{i}", 200, (), body).encode()
            assert read_path._decoded(value) is not None
            del value
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 48 * 1024 * 1024, f"{kept / 2**20:.0f} MiB kept for 50 MiB read"
