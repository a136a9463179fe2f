"""Deployments that share one redis-server never see each other's messages, tasks or values: two
stacks on two databases of it (the same namespace names), and two on one database with two
HERDLESS_PREFIXes (shared/keys.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.keys import Keyspace
from shared.tasks import broker_lists
from tests.faults.observe import web_metric
from tests.stack import RedisServer, Stack, stack_for, wait_until

ADMIN = "shared-redis-admin-token-of-40-characters"
SLOW_ORIGIN_MS = 3000  # how long B's refreshes take: A's answers land while B's readers wait

NAMESPACES = """
[namespaces.shared]
origin = "${ORIGIN_BASE_URL}/items/{key}"
freshness = "origin"
cache_ttl_seconds = 60
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path_factory.mktemp("shared-redis")).start()
    yield redis
    redis.stop()


def stack_on(tmp: Path, server: RedisServer, db: int, env: dict[str, str], **options: Any) -> Any:
    base = {"ADMIN_TOKEN": ADMIN, "WEB_CONCURRENCY": "1", "COLD_WAIT_TIMEOUT_SECONDS": "10", **env}
    return stack_for(tmp, NAMESPACES, base, redis=server, db=db, **options)


@pytest.fixture(scope="module")
def two_databases(server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """A (db 1, a fast origin) and B (db 2, a slow one), both with the default prefix."""
    with (
        stack_on(tmp_path_factory.mktemp("a"), server, 1, {"ORIGIN_LATENCY_MS": "20"}) as a,
        stack_on(tmp_path_factory.mktemp("b"), server, 2, {"ORIGIN_LATENCY_MS": str(SLOW_ORIGIN_MS)}) as b,
    ):
        yield a, b


def configure(stack: Stack, key: str, **config: Any) -> None:
    stack.origin_config(keys={key: config})


def cold_readers_of_b_while_a_answers(a: Stack, b: Stack, key: str, readers: int = 4) -> list[requests.Response]:
    """`readers` cold reads of `key` in B; while B's one refresh is at B's (slow) origin, A
    answers the same key (its refresh ends first). Returns B's answers."""
    wait_until(lambda: b.origin_stats()["in_flight"] == 0, 10, "B's earlier refreshes to end")
    started = threading.Barrier(readers + 1)

    def read_b() -> requests.Response:
        started.wait()
        return b.get("shared", key, timeout=30)

    with ThreadPoolExecutor(readers) as pool:
        answers = [pool.submit(read_b) for _ in range(readers)]
        started.wait()
        # B's refresh is at its origin: its winning reader registered before it enqueued.
        wait_until(lambda: b.origin_stats()["in_flight"] == 1, 10, "B's refresh to reach B's origin", interval=0.02)
        a.get("shared", key)
        assert b.origin_stats()["in_flight"] == 1, "B's refresh ended before A answered: the test proves nothing"
        return [f.result() for f in answers]


def test_cold_readers_of_b_get_b_s_own_no_store_answer_never_a_s(two_databases: tuple[Stack, Stack]) -> None:
    a, b = two_databases
    configure(a, "hand", value={"deployment": "A"}, cache_control="no-store")
    configure(b, "hand", value={"deployment": "B"}, cache_control="no-store")
    answers = cold_readers_of_b_while_a_answers(a, b, "hand")
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"deployment": "B"})] * len(answers)
    assert a.get("shared", "hand").json() == {"deployment": "A"}


def test_an_origin_error_of_a_never_wakes_b_s_waiters_with_an_error(two_databases: tuple[Stack, Stack]) -> None:
    a, b = two_databases
    a.origin_config(failure_rate=1.0)
    try:
        configure(b, "err", value={"deployment": "B"})
        answers = cold_readers_of_b_while_a_answers(a, b, "err")
        assert a.get("shared", "err").status_code == 502  # A's own key cools down
    finally:
        a.origin_config(failure_rate=0.0)
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"deployment": "B"})] * len(answers)


def test_a_purge_or_a_write_in_a_leaves_b_s_near_cache_and_values_alone(two_databases: tuple[Stack, Stack]) -> None:
    a, b = two_databases
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert a.get("shared", "kept").status_code == 200
    b.origin_config(latency_ms=20)
    try:
        configure(b, "kept", value={"deployment": "B"})
        assert b.get("shared", "kept").json() == {"deployment": "B"}
        hits = web_metric(b, "herdless_near_cache_total", result="hit")
        wait_until(
            lambda: b.get("shared", "kept") and web_metric(b, "herdless_near_cache_total", result="hit") > hits,
            10,
            "B to serve the key from its near-cache",
        )
        invalidated = web_metric(b, "herdless_near_cache_total", result="invalidated")
        assert requests.delete(a.url("shared", "kept"), headers=auth, timeout=10).status_code == 204
        assert a.get("shared", "kept").status_code == 200  # A refreshes and writes the key again
        # A purge in B waits until B's web process has handled every message published before
        # it: A's invalidation and A's ready message, had B heard them, would have been by then.
        assert requests.delete(b.url("shared", "other"), headers=auth, timeout=10).status_code == 204
        assert web_metric(b, "herdless_near_cache_total", result="invalidated") == invalidated
        hits = web_metric(b, "herdless_near_cache_total", result="hit")
        assert b.get("shared", "kept").json() == {"deployment": "B"}
        assert web_metric(b, "herdless_near_cache_total", result="hit") == hits + 1
    finally:
        b.origin_config(latency_ms=SLOW_ORIGIN_MS)


def test_two_prefixes_on_one_database_never_take_each_other_s_tasks(
    server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    db = 3
    client = server.client(db=db)
    # A has no worker yet: its task waits in A's queue, where B's worker must not take it.
    env_a = {"HERDLESS_PREFIX": "alpha", "COLD_WAIT_TIMEOUT_SECONDS": "1", "LEASE_TTL_SECONDS": "30"}
    with (
        stack_on(tmp_path_factory.mktemp("alpha"), server, db, env_a, workers=0) as a,
        stack_on(tmp_path_factory.mktemp("beta"), server, db, {"HERDLESS_PREFIX": "beta"}) as b,
    ):
        a_queue = broker_lists(Keyspace("alpha", db))
        assert a.get("shared", "task").status_code == 503  # enqueued; no worker of A runs it
        assert sum(client.llen(name) for name in a_queue) == 1
        assert web_metric(a, "herdless_queue_depth", queue=Keyspace("alpha", db).queue) == 1
        # B's worker consumes B's queue: once it has run one of B's tasks it would have taken
        # A's, enqueued earlier, had it listened to the same list.
        assert b.get("shared", "mine").status_code == 200
        assert "task" not in b.origin_stats()["per_key"]
        assert sum(client.llen(name) for name in a_queue) == 1
        a.start_worker("w1", wait=True)
        wait_until(lambda: a.get("shared", "task").status_code == 200, 15, "A's own worker to run A's task")
        assert a.origin_stats()["per_key"] == {"task": 1}
        assert "task" not in b.origin_stats()["per_key"]
        # Every key either deployment wrote (values, leases, rates, subscribers, the broker's
        # lists and bindings) carries its prefix.
        names = {name.decode() for name in client.scan_iter(count=1000)}
        assert names and all(name.startswith(("alpha:", "beta:")) for name in names), sorted(names)
        assert any(name.startswith("alpha:3:") for name in names), sorted(names)
