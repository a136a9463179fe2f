"""WORKER_PROCESSES=N: one `python -m workers` runs N Celery workers on one host that all consume,
with one /metrics endpoint that shows all of them, and leaves no metrics directory behind."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest
import requests
from celery import Celery

from shared.settings import Settings
from shared.tasks import celery_config
from tests.faults.fixture_origin import FixtureOrigin
from tests.stack import Stack, metric, stack_for, wait_until

HERD = "herd"


@pytest.fixture(scope="module")
def gated() -> Iterator[FixtureOrigin]:
    with FixtureOrigin() as origin:
        yield origin


@pytest.fixture(scope="module")
def stack(gated: FixtureOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    namespaces = f'[namespaces.gated]\norigin = "{gated.base_url}/v/{{key}}"\n'
    # One refresh at a time per member: two refreshes at the origin at once means both ran.
    one_slot_each = {"WORKER_POOL": "prefork", "WORKER_CONCURRENCY": "1", "COLD_WAIT_TIMEOUT_SECONDS": "20"}
    with stack_for(tmp_path_factory.mktemp("worker-herd"), namespaces, one_slot_each, workers=0) as running:
        running.start_worker(HERD, extra_env={"WORKER_PROCESSES": "2"})
        herd = running.procs[HERD]
        wait_until(lambda: herd.output().count("ready.") == 2 or not herd.alive(), 60, "both herd members ready")
        assert herd.alive(), herd.output()[-3000:]
        yield running


def herd_metrics(stack: Stack) -> str:
    return requests.get(f"http://127.0.0.1:{stack.worker_metrics_ports[HERD]}/metrics", timeout=5).text


def test_a_herd_of_two_answers_as_two_celery_workers_with_hostnames_of_their_own(stack: Stack) -> None:
    app = Celery("herd-ping")
    app.conf.update(celery_config(Settings(redis_url=stack.redis_url)))
    try:
        replies = app.control.ping(timeout=2)
    finally:
        app.close()
    names = sorted(name.partition("@")[0] for reply in replies for name in reply)
    assert names == ["herd-1", "herd-2"], replies


def test_both_members_of_a_herd_consume_and_one_metrics_endpoint_counts_both(
    stack: Stack, gated: FixtureOrigin
) -> None:
    before = metric(herd_metrics(stack), "herdless_refresh_total", namespace="gated")
    answers: list[requests.Response] = []
    gated.hold()
    readers = [
        threading.Thread(target=lambda key=key: answers.append(stack.get("gated", key, timeout=30)))
        for key in ("cold-a", "cold-b")
    ]
    try:
        for reader in readers:
            reader.start()
        # Each member runs one refresh at a time: both keys at the origin at once is both members.
        wait_until(lambda: gated.in_flight == 2, 20, "two refreshes at the origin at once")
    finally:
        gated.release()
        for reader in readers:
            reader.join(30)
    assert sorted(r.status_code for r in answers) == [200, 200], answers
    wait_until(
        lambda: metric(herd_metrics(stack), "herdless_refresh_total", namespace="gated") == before + 2,
        10,
        "both members' refreshes on the herd's one /metrics",
    )


def test_a_stopped_herd_stops_its_members_and_leaves_no_metrics_directory_behind(stack: Stack) -> None:
    herd = stack.procs[HERD]
    assert len(list((stack.tmp / "metrics").glob("herdless-worker-*"))) == 1
    herd.popen.send_signal(signal.SIGTERM)  # the herd alone, as `docker stop` or systemd would
    assert herd.popen.wait(30) == 0, herd.output()[-3000:]
    assert herd.output().count("Warm shutdown") >= 2, herd.output()[-3000:]  # each member, warm
    assert list((stack.tmp / "metrics").glob("herdless-worker-*")) == []
