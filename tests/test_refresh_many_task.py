"""The task that carries several keys of one namespace (workers/tasks.py refresh_many) runs each
key in a thread of its own: a key whose run raised fails the task, as it fails a single-key
task, rather than dying in its thread while the task reports success."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

import workers.tasks as tasks
from shared.namespaces import build_namespace
from shared.origin_slots import OriginSlots
from shared.refresher import Refresher
from shared.settings import Settings
from shared.store import CacheStore, make_redis
from tests.stack import free_port


@pytest.fixture
def engine_without_redis() -> Iterator[Refresher]:
    # Nothing listens on the port: every claim fails with a connection error.
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    store = CacheStore(make_redis(settings), settings)
    ns = build_namespace("t", {"origin": "tests.origins:compute"}, settings)
    engine = Refresher(settings, {ns.name: ns}, store, slots=lambda name: OriginSlots(store.redis, name))
    previous, tasks._engine = tasks._engine, engine
    yield engine
    tasks._engine = previous


def test_a_key_whose_run_raises_fails_the_task(engine_without_redis: Refresher) -> None:
    items = [["a", "tok-a", "miss", 0], ["b", "tok-b", "miss", 0]]
    with pytest.raises(redis.exceptions.ConnectionError):
        tasks.refresh_many.run("t", items)
