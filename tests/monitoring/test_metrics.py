"""Metrics at every decision point, Flower's view of the refreshes, and the live status page."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import requests

from shared.keys import EntryKeys
from tests.e2e.conftest import SHIPPED_AND_LONG_HERD_NAMESPACES
from tests.faults.observe import queued_refreshes
from tests.stack import PYTHON, UNACKED, Proc, Stack, cold_herd, free_port, metric, wait_until

WEB_METRICS = [
    "herdless_requests_total",
    "herdless_request_duration_seconds",
    "herdless_served_age_seconds",
    "herdless_refresh_enqueued_total",
    "herdless_refresh_suppressed_total",
    "herdless_queue_depth",
    "herdless_breaker_state",
    "herdless_origin_in_flight",
    "herdless_near_cache_total",
    "herdless_near_cache_bytes",
    "herdless_cold_wakeups_total",
    "herdless_redis_degraded",
    "herdless_degraded_answers_total",
    "herdless_refused_total",
]
WORKER_METRICS = [
    "herdless_refresh_total",
    "herdless_origin_calls_total",
    "herdless_origin_bytes_total",
    "herdless_origin_duration_seconds",
    "herdless_refresh_lag_seconds",
    "herdless_breaker_state",
    "herdless_breaker_transitions_total",
    "herdless_queue_depth",
    "herdless_origin_in_flight",
    "herdless_origin_slot_wait_seconds",
]
FLOWER_AUTH = ("herdless", "flower-test-secret")

# The shipped demo namespaces (1 s TTL in this module, so background refreshes keep running)
# plus the 60 s "herd" namespace for counts that must be exactly one call per herd, and a
# callable origin whose keys choose how it fails (its own breaker: the demo origin's stays closed).
STACK_NAMESPACES = (
    SHIPPED_AND_LONG_HERD_NAMESPACES
    + """
[namespaces.py-typed]
origin = "tests.origins:typed"
cache_ttl_seconds = 60
origin_timeout_seconds = 0.5
"""
)
# prefork: the multiprocess metric files of pool children must add up (the gevent default
# runs in one process, which every other stack of the suite exercises).
STACK_ENV = {
    "WEB_CONCURRENCY": "2",
    "CACHE_TTL_SECONDS": "1",
    "LEASE_TTL_SECONDS": "1",
    "ORIGIN_LATENCY_MS": "100",
    "WORKER_POOL": "prefork",
    "WORKER_CONCURRENCY": "2",
}


@pytest.fixture(scope="module")
def flower(stack: Stack) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in stack.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)})
    proc = Proc(
        "flower",
        [PYTHON, "-m", "celery", "-A", "workers.celery_app", "flower", "--conf=monitoring/flowerconfig.py"],
        env,
        stack.logdir,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: not proc.alive() or requests.get(base + "/healthcheck", timeout=1).ok, 30, "Flower")
        assert proc.alive(), proc.output()[-2000:]
        # Workers send task events once a monitor asks (shared/tasks.py): Flower asks at start
        # and every few seconds. Once it lists a refresh of a probe key, it sees every task.
        probes = iter(range(1000))

        def flower_sees_a_refresh() -> bool:
            assert stack.get("herd", f"flower-probe-{next(probes)}").status_code == 200
            tasks = requests.get(base + "/api/tasks", auth=FLOWER_AUTH, timeout=5).json()
            return any(t.get("name") == "herdless.refresh" for t in tasks.values())

        wait_until(flower_sees_a_refresh, 30, "Flower to enable the workers' task events", interval=0.5)
        yield base
    finally:
        proc.stop()


def web_metrics(stack: Stack) -> str:
    return requests.get(stack.web_url + "/metrics", timeout=5).text


def worker_metrics(stack: Stack) -> str:
    return requests.get(stack.worker_metrics_url, timeout=5).text


def test_a_cold_herd_is_one_origin_call_and_the_rest_is_accounted_as_suppressed(stack: Stack, flower: str) -> None:
    key = "metrics-herd"
    web_before, worker_before = web_metrics(stack), worker_metrics(stack)
    assert {status for _, status, _ in cold_herd(stack, "herd", [key], 300)} == {200}
    web, worker = web_metrics(stack), worker_metrics(stack)

    def delta(after: str, before: str, name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta(worker, worker_before, "herdless_origin_calls_total", namespace="herd") == 1
    assert delta(worker, worker_before, "herdless_refresh_total", namespace="herd", outcome="written") == 1
    assert delta(web, web_before, "herdless_refresh_enqueued_total", namespace="herd") == 1
    misses = delta(web, web_before, "herdless_requests_total", namespace="herd", outcome="miss")
    hits = delta(web, web_before, "herdless_requests_total", namespace="herd", outcome="hit")
    assert misses + hits == 300
    suppressed = delta(web, web_before, "herdless_refresh_suppressed_total", namespace="herd")
    assert suppressed == misses - 1, (suppressed, misses)
    # The waiters of each web process that had any were woken once, by the published refresh.
    assert misses == 0 or 1 <= delta(web, web_before, "herdless_cold_wakeups_total", namespace="herd") <= 2
    assert delta(web, web_before, "herdless_request_duration_seconds_count", namespace="herd") == 300
    assert metric(worker, "herdless_refresh_lag_seconds_count", namespace="herd") >= 1
    for name in WEB_METRICS:
        assert re.search(rf"^{name}", web, re.M), f"{name} missing from the web tier's /metrics"
    for name in WORKER_METRICS:
        assert re.search(rf"^{name}", worker, re.M), f"{name} missing from the worker's /metrics"
    for text in (web, worker):
        series = [line for line in text.splitlines() if line.startswith("herdless_")]
        assert not [s for s in series if 'pid="' in s or 'key="' in s]

    # Flower saw the refresh too, through its authenticated API only.
    assert requests.get(flower + "/api/tasks", timeout=5).status_code == 401
    tasks = wait_until(
        lambda: [
            t
            for t in requests.get(flower + "/api/tasks", auth=FLOWER_AUTH, timeout=5).json().values()
            if t.get("name") == "herdless.refresh" and t.get("state") == "SUCCESS"
        ],
        15,
        "Flower to list the refresh task",
    )
    # Its args column names the namespace and key (shared/tasks.py RefreshRequest.shown).
    assert any(t.get("args") == "herd/'metrics-herd'" for t in tasks), [t.get("args") for t in tasks]


def test_each_slot_wait_is_observed_once(stack: Stack) -> None:
    before = worker_metrics(stack)
    assert stack.get("demo", "slot-wait-once").headers["X-Cache"] == "MISS"

    def deltas() -> tuple[float, float]:
        after = worker_metrics(stack)
        calls = metric(after, "herdless_origin_calls_total") - metric(before, "herdless_origin_calls_total")
        waits = metric(after, "herdless_origin_slot_wait_seconds_count") - metric(
            before, "herdless_origin_slot_wait_seconds_count"
        )
        return calls, waits

    # Other keys of this module may refresh meanwhile (1 s TTL); every origin call, ours
    # included, waits for its slot exactly once, so the two counts move together.
    calls, waits = wait_until(
        lambda: (d := deltas())[0] >= 1 and d[0] == d[1] and d, 10, "slot waits to match origin calls"
    )
    assert waits == calls >= 1


def test_queue_depth_rises_while_workers_are_away_but_never_past_one_per_key(stack: Stack) -> None:
    keys = [f"depth-{i}" for i in range(5)]
    for key in keys:
        assert stack.get("demo-swr", key).status_code == 200
    stack.stop_worker("w1")  # graceful: the worker finishes what it runs, then leaves
    try:
        deadline = time.monotonic() + 4  # several 1 s leases run out meanwhile
        depths = []
        while time.monotonic() < deadline:
            for key in keys:
                r = stack.get("demo-swr", key)
                assert r.status_code == 200  # stale values keep being served
            depths.append(metric(web_metrics(stack), "herdless_queue_depth"))
        assert max(depths) == len(keys), depths
        assert depths[-1] == len(keys)
    finally:
        stack.start_worker("w1", wait=True)
    wait_until(lambda: metric(web_metrics(stack), "herdless_queue_depth") == 0, 20, "the queue to drain")
    refreshed = wait_until(
        lambda: all(stack.get("demo-swr", k).json()["count"] >= 2 for k in keys),
        20,
        "fresh refreshes once the worker is back",
    )
    assert refreshed
    # The refreshes that waited past their leases ran (their `expires` is the queued marker's
    # life): none was discarded unrun, none enqueued twice.
    text = worker_metrics(stack)
    assert metric(text, "herdless_refresh_total", namespace="demo-swr", outcome="expired") == 0


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (make test installs Debian's chromium package)"
    return binary


def render(url: str) -> str:
    """The page's DOM after its scripts ran, from real headless Chromium."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=3000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def figure(dom: str, element_id: str) -> float:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert m, f"#{element_id} not on the page"
    return float(m.group(1))


def test_the_status_page_renders_live_numbers_in_headless_chromium(stack: Stack) -> None:
    before = render(stack.web_url + "/")
    requests_before = figure(before, "requests-total")
    calls_before = figure(before, "origin-calls-total")
    assert figure(before, "queue-depth") >= 0
    for i in range(3):
        assert stack.get("demo", f"status-page-{i}").status_code == 200
    for _ in range(20):
        assert stack.get("demo", "status-page-0").status_code == 200
    after = render(stack.web_url + "/")
    assert figure(after, "requests-total") >= requests_before + 23
    assert figure(after, "origin-calls-total") >= calls_before + 3
    assert "closed" in after  # the demo origin's breaker
    requests_table = re.search(r'<table id="requests">(.*?)</table>', after, re.S)
    assert requests_table and 'data-key="hit"' in requests_table.group(1)
    assert 0 < figure(after, "fresh-share") <= 100
    assert figure(after, "served-age-p99") >= 0
    assert figure(after, "near-cache-bytes") > 0  # status-page-0 is held in memory
    near_cache_table = re.search(r'<table id="near-cache">(.*?)</table>', after, re.S)
    assert near_cache_table and 'data-key="bypassed"' in near_cache_table.group(1)
    in_flight = re.search(r'<table id="origin-in-flight">(.*?)</table>', after, re.S)
    assert in_flight and re.search(r'data-key="[^"]+">\d+ / 50<', in_flight.group(1)), in_flight
    slot_waits = re.search(r'<table id="slot-waits">(.*?)</table>', after, re.S)
    assert slot_waits and re.search(r'data-key="[^"]+">\d+, p99 [\d.]+ s<', slot_waits.group(1)), slot_waits
    # Each namespace's last minute (its figures: tests/e2e/test_engine.py), named by namespace.
    last_minute = re.search(r'<table id="last-minute">(.*?)</table>', after, re.S)
    assert last_minute and re.search(
        r'<tr data-namespace="demo">.*?data-figure="answers-per-second">[\d.]+<', last_minute.group(1)
    )


def test_status_json_reports_freshness_near_cache_and_origin_slots(stack: Stack) -> None:
    def status() -> dict:
        return requests.get(stack.web_url + "/status.json", timeout=5).json()

    before = status()
    # A 60 s value: a 1 s one spends up to its last quarter in its XFetch early window (the
    # head start's bound), where reads are EARLY, not HIT.
    assert stack.get("herd", "status-json-cold").headers["X-Cache"] == "MISS"
    for _ in range(10):
        assert stack.get("herd", "status-json-cold").status_code == 200
    after = status()

    # The keys the page has always read are still there.
    assert {"requests", "requests_total", "refresh_enqueued", "refresh_suppressed", "queue_depth", "breakers"} <= set(
        after
    )
    hits = after["requests"]["hit"] - before["requests"].get("hit", 0)
    assert hits >= 9, (before["requests"], after["requests"])
    fresh = after["requests"].get("hit", 0) + after["requests"].get("early", 0)
    assert after["fresh_share"] == pytest.approx(fresh / after["requests_total"])
    # Every answer above served a value younger than a minute.
    assert 0 <= after["served_age_p99_seconds"] <= 60

    assert set(after["near_cache"]) == {"hit", "miss", "invalidated", "bypassed"}
    assert after["near_cache"]["hit"] > before["near_cache"]["hit"], "repeated reads are served from memory"
    assert after["near_cache_bytes"] > 0

    # Every demo namespace calls the one demo origin, py-typed its callable: the public page
    # names each by its namespaces, never by host:port or module. Nothing is being refreshed now:
    # no slot is held, and the limit is the default ORIGIN_MAX_CONCURRENCY.
    origin = "origin of demo, demo-lock, demo-naive, demo-proxy, demo-swr, herd"
    assert after["origin_limits"] == {origin: 50, "origin of py-typed": 50}
    assert after["origin_in_flight"] == {origin: 0, "origin of py-typed": 0}
    assert stack.origin_url.removeprefix("http://") not in json.dumps(after)

    waits = after["worker"]["slot_waits"][origin]
    assert waits["waits"] > before["worker"]["slot_waits"][origin]["waits"]
    assert waits["p99_seconds"] is not None and 0 <= waits["p99_seconds"] <= 1
    assert waits["mean_seconds"] is not None and waits["mean_seconds"] >= 0
    assert "slot_timeout" in after["worker"]["refreshes"]


def test_metrics_name_each_origin_by_its_namespaces_never_by_host_or_module(stack: Stack) -> None:
    assert stack.get("herd", "origin-labels").status_code == 200
    assert stack.get("py-typed", "boom-origin-labels").status_code == 502  # a slot wait, a failure
    demo = "origin of demo, demo-lock, demo-naive, demo-proxy, demo-swr, herd"
    pages = {
        "web": requests.get(stack.web_url + "/metrics", timeout=5).text,
        "worker": requests.get(stack.worker_metrics_url, timeout=5).text,
    }
    for tier, text in pages.items():
        labels = set(re.findall(r'\borigin="([^"]*)"', text))
        assert labels == {demo, "origin of py-typed"}, (tier, labels)
        assert stack.origin_url.removeprefix("http://") not in text, tier
        assert "tests.origins:typed" not in text, tier
    assert metric(pages["worker"], "herdless_breaker_state", origin="origin of py-typed") == 0
    assert metric(pages["worker"], "herdless_origin_slot_wait_seconds_count", origin=demo) >= 1


def _pool_children(main_pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(main_pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_counters_of_a_replaced_pool_process_are_kept_without_a_pid_label(stack: Stack) -> None:
    main_pid = stack.procs["w1"].pid
    children = _pool_children(main_pid)
    assert len(children) == 2
    before = metric(worker_metrics(stack), "herdless_origin_calls_total")
    assert before > 0
    victim = min(children)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(_pool_children(main_pid) - {victim}) == 2, 20, "Celery to replace the pool process")
    assert stack.get("demo", "after-replace").status_code == 200
    after = worker_metrics(stack)
    assert metric(after, "herdless_origin_calls_total") == before + 1
    assert 'pid="' not in after


def test_a_refresh_that_failed_is_a_failure_in_flower_with_its_reason_and_is_not_run_again(
    stack: Stack, flower: str
) -> None:
    key = "nonjson-flower"  # the callable returns a value JSON cannot encode: an origin error
    before = worker_metrics(stack)
    r = stack.get("py-typed", key)
    assert r.status_code == 502 and r.json()["error"] == "origin_error", r.text

    def failed_task() -> dict[str, object] | None:
        tasks = requests.get(flower + "/api/tasks", auth=FLOWER_AUTH, timeout=5).json()
        found = [
            t for t in tasks.values() if t.get("name") == "herdless.refresh" and t.get("args") == f"py-typed/{key!r}"
        ]
        return next((t for t in found if t.get("state") == "FAILURE"), None)

    task = wait_until(failed_task, 15, "Flower to show the refresh as failed")
    info = requests.get(f"{flower}/api/task/info/{task['uuid']}", auth=FLOWER_AUTH, timeout=5).json()
    assert info["state"] == "FAILURE" and not info.get("retries"), info
    assert "RefreshFailed" in info["exception"] and "origin_error" in info["exception"], info["exception"]
    assert "not JSON-able" in info["exception"]
    # Acknowledged before the failure event was sent, and never retried or redelivered.
    redis = stack.redis.client()
    assert task["uuid"] not in str(redis.hgetall(UNACKED))
    assert key not in [k for k, _ in queued_refreshes(redis)]
    # ...and its queued marker went with the acknowledgement: the next read may enqueue again.
    assert redis.exists(EntryKeys.of("py-typed", key).queued) == 0
    after = worker_metrics(stack)
    for name, outcome in (("herdless_origin_calls_total", "error"), ("herdless_refresh_total", "origin_error")):
        labels = {"namespace": "py-typed", "outcome": outcome}
        assert metric(after, name, **labels) - metric(before, name, **labels) == 1, name

    # One log line for the failure; none of Celery's per-task INFO lines ("received", "succeeded").
    log = stack.procs["w1"].output()
    assert log.count(f"refresh of py-typed/'{key}' failed: origin_error") == 1
    assert not re.search(r"herdless\.refresh\[[^]]*\] (received|succeeded)", log), "Celery's per-task lines"
    assert "succeeded in" not in log and "raised expected" not in log


@pytest.mark.parametrize(
    ("key", "error"),
    [("oversized-code", "origin_too_large"), ("slow-code", "origin_timeout"), ("boom-code", "origin_error")],
)
def test_a_cold_key_whose_origin_fails_answers_the_failure_s_own_code(stack: Stack, key: str, error: str) -> None:
    r = stack.get("py-typed", key)
    assert r.status_code == 502 and r.json()["error"] == error, r.text
    assert int(r.headers["Retry-After"]) >= 1
    # Later reads during the key's cooldown answer the same code, from the cooldown in Redis.
    again = stack.get("py-typed", key)
    assert again.status_code == 502 and again.json()["error"] == error, again.text
