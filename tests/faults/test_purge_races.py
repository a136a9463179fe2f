"""Purges racing a refresh that is still calling the origin: the purge wins, however long the call."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.e2e.conftest import LONG_AND_SWR_NAMESPACES
from tests.faults.observe import worker_metric
from tests.stack import Stack, stack_for, wait_until

ADMIN = "purge-race-admin-token-fcbc74aafb492ce01"


ENV = {"ADMIN_TOKEN": ADMIN}


def _refresh_and_wait_for_its_origin_call(stack: Stack, key: str) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    before = stack.origin_stats()["per_key"].get(key, 0)
    r = requests.post(stack.url("k", key) + "/refresh", headers=auth, timeout=5)
    assert r.status_code == 202 and r.json()["enqueued"] is True, r.text
    wait_until(lambda: stack.origin_stats()["per_key"].get(key, 0) > before, 10, "the refresh's origin call")


def test_a_hard_purge_during_a_slow_refresh_is_never_undone(tmp_path: Path) -> None:
    with stack_for(tmp_path, LONG_AND_SWR_NAMESPACES, ENV) as stack:
        assert stack.get("k", "hp").json()["count"] == 1
        stack.origin_config(latency_ms=2500)  # the next origin call is slow
        _refresh_and_wait_for_its_origin_call(stack, "hp")
        lost = worker_metric(stack, "herdless_refresh_total", outcome="lost_lease")
        r = requests.delete(stack.url("k", "hp"), headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
        assert r.status_code == 204
        # The slow call returns with the value it fetched before the purge: refused.
        wait_until(
            lambda: worker_metric(stack, "herdless_refresh_total", outcome="lost_lease") > lost,
            15,
            "the slow refresh's write to be refused",
        )
        stack.origin_config(latency_ms=50)
        after = stack.get("k", "hp")
        assert after.status_code == 200 and after.headers["X-Cache"] == "MISS"
        assert after.json()["count"] == 3  # a refresh that started after the purge


def test_a_soft_purge_during_a_refresh_fences_it(tmp_path: Path) -> None:
    with stack_for(tmp_path, LONG_AND_SWR_NAMESPACES, ENV) as stack:
        assert stack.get("k", "sp").json()["count"] == 1
        stack.origin_config(latency_ms=2500)
        _refresh_and_wait_for_its_origin_call(stack, "sp")
        lost = worker_metric(stack, "herdless_refresh_total", outcome="lost_lease")
        r = requests.delete(stack.url("k", "sp") + "?soft=1", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
        assert r.status_code == 204
        wait_until(
            lambda: worker_metric(stack, "herdless_refresh_total", outcome="lost_lease") > lost,
            15,
            "the refresh that started before the soft purge to be refused",
        )
        # Its value (count 2) is never served as fresh: the old value is served stale until a
        # refresh that started after the soft purge lands.
        stack.origin_config(latency_ms=50)
        stale = stack.get("k", "sp")
        assert stale.headers["X-Cache"] == "STALE" and stale.json()["count"] == 1
        wait_until(lambda: stack.get("k", "sp").headers["X-Cache"] == "HIT", 10, "the refresh after the soft purge")
        assert stack.get("k", "sp").json()["count"] == 3
