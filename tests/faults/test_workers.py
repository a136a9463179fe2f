"""Workers stopping, dying and going missing: refreshes finish, move elsewhere or are discarded."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import requests

from tests.e2e.conftest import LONG_AND_SWR_NAMESPACES
from tests.faults.observe import TrafficLoop, queued_refreshes, worker_metric
from tests.stack import UNACKED, stack_for, wait_until

NAMESPACES = LONG_AND_SWR_NAMESPACES


Q_NAMESPACE = """
[namespaces.q]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 2
"""


def test_a_cold_key_with_no_worker_running_gets_503_cold_wait_timeout(tmp_path: Path) -> None:
    cold_wait = 1.0
    env = {
        "COLD_WAIT_TIMEOUT_SECONDS": str(cold_wait),
    }
    with stack_for(tmp_path, NAMESPACES, env, workers=0) as stack:
        t0 = time.monotonic()
        r = stack.get("k", "nobody-refreshes-me")
        elapsed = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.json()["error"] == "cold_wait_timeout" and r.json()["detail"]
        assert int(r.headers["Retry-After"]) >= 1
        # It waited out its COLD_WAIT_TIMEOUT_SECONDS for a refresh nobody ran.
        assert elapsed >= cold_wait
        assert stack.origin_stats()["calls"] == 0
        # The refresh stays queued (one per key) for the workers to come.
        again = stack.get("k", "nobody-refreshes-me")
        assert again.status_code == 503 and again.json()["error"] == "cold_wait_timeout"
        assert [key for key, _ in queued_refreshes(stack.redis.client())] == ["nobody-refreshes-me"]


def test_sigterm_during_a_refresh_lets_it_finish_and_write(tmp_path: Path) -> None:
    env = {
        "ORIGIN_LATENCY_MS": "1500",
        "COLD_WAIT_TIMEOUT_SECONDS": "15",
    }
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        answers: list[requests.Response] = []
        waiter = threading.Thread(target=lambda: answers.append(stack.get("k", "graceful", timeout=30)))
        waiter.start()
        wait_until(lambda: stack.origin_stats()["per_key"].get("graceful") == 1, 10, "the refresh's origin call")
        worker = stack.procs["w1"]
        os.kill(worker.pid, signal.SIGTERM)  # to the main process only, as systemd or Kubernetes would
        wait_until(lambda: not worker.alive(), 30, "the worker to finish its refresh and exit")
        waiter.join(10)

        assert worker.popen.returncode == 0
        log = worker.output()
        # The refresh's line is the summary the worker logs as it stops (Celery's per-task lines are quiet).
        assert "Warm shutdown" in log and "1 refreshes, 1 wrote a value, 0 failed" in log
        assert answers and answers[0].status_code == 200 and answers[0].json()["count"] == 1
        # Written to Redis: served with no worker left, and the broker holds nothing to redo.
        r = stack.get("k", "graceful")
        assert r.headers["X-Cache"] == "HIT" and r.json()["count"] == 1
        redis = stack.redis.client()
        assert queued_refreshes(redis) == [] and redis.hlen(UNACKED) == 0
        assert stack.origin_stats()["per_key"]["graceful"] == 1


def test_sigkill_of_one_of_two_worker_hosts_moves_the_refresh_to_the_other(tmp_path: Path) -> None:
    env = {
        "LEASE_TTL_SECONDS": "2",
        "ORIGIN_LATENCY_MS": "50",
    }
    with stack_for(tmp_path, NAMESPACES, env, workers=0) as stack:
        # debug: Celery's per-task "received" / "succeeded" lines, which tell the hosts' work apart.
        debug = {"LOG_LEVEL": "debug"}
        hosts = {name: stack.start_worker(name, extra_env=debug, wait=True) for name in ("host-a", "host-b")}
        assert all(f"{name}@" in proc.output() for name, proc in hosts.items())  # two node names
        key = "two-hosts"
        v1 = stack.get("swr", key).json()
        stack.origin_config(latency_ms=4000)
        received = {name: proc.output().count("received") for name, proc in hosts.items()}

        with TrafficLoop([stack.url("swr", key)], timeout=5, pause=0.05) as traffic:
            wait_until(lambda: stack.origin_stats()["per_key"].get(key) == 2, 10, "the stale refresh's origin call")
            busy = [n for n, p in hosts.items() if p.output().count("received") > received[n]]
            assert len(busy) == 1, busy
            victim, survivor = busy[0], next(n for n in hosts if n != busy[0])
            written_by_survivor = hosts[survivor].output().count("'written'")
            hosts[victim].stop(signal.SIGKILL)  # the whole "host": main process and pool children
            stack.origin_config(latency_ms=50)

            def refreshed_by_survivor() -> bool:
                r = stack.get("swr", key)
                return r.status_code == 200 and r.json()["count"] >= 3

            wait_until(refreshed_by_survivor, 20, "a refresh by the surviving host")

        assert hosts[survivor].output().count("'written'") > written_by_survivor
        assert not hosts[victim].alive()
        failed = [(s.status, s.body[:80]) for s in traffic.samples if s.status != 200]
        assert not failed, failed[:5]
        # Every read was served from the cache (stale while the killed refresh hung), never waited on the origin.
        assert max(s.elapsed for s in traffic.samples) < 1.0
        assert v1["count"] == 1


def test_while_workers_are_absent_stale_is_served_and_the_queued_refreshes_run_once_on_return(
    tmp_path: Path,
) -> None:
    lease_ttl = 1.0
    env = {
        "LEASE_TTL_SECONDS": str(lease_ttl),
        "ORIGIN_LATENCY_MS": "20",
    }
    with stack_for(tmp_path, NAMESPACES, env) as stack:
        redis = stack.redis.client()
        keys = [f"absent-{i}" for i in range(4)]
        originals = {k: stack.get("swr", k).json() for k in keys}
        stack.stop_worker("w1")  # graceful: nothing in flight
        calls_while_absent = stack.origin_stats()["calls"]
        live_per_key: Counter[str] = Counter()
        ever_queued: set[str] = set()
        most_queued = 0

        with TrafficLoop([stack.url("swr", k) for k in keys], timeout=5, pause=0.02) as traffic:
            started = time.monotonic()

            def absent_long_enough() -> bool:
                # Sample the broker: each key may have at most one refresh that is still alive.
                nonlocal most_queued
                queued = queued_refreshes(redis)
                now = datetime.now().astimezone()
                live = Counter(k for k, expires in queued if expires is None or expires > now)
                ever_queued.update(k for k, _ in queued)
                for k, n in live.items():
                    live_per_key[k] = max(live_per_key[k], n)
                most_queued = max(most_queued, len(queued))
                return time.monotonic() - started > 3.5 * lease_ttl

            wait_until(absent_long_enough, 15, "several lease lifetimes without workers", interval=0.1)
            assert stack.origin_stats()["calls"] == calls_while_absent  # nobody called the origin
            stale = traffic.since(started)
            assert stale and all(s.status == 200 for s in stale), [(s.status, s.body[:80]) for s in stale][:5]
            assert all(json.loads(s.body) in originals.values() for s in stale)
            assert all(s.headers["X-Cache"] == "STALE" for s in stale[len(keys) :])

            # Every key got its one refresh queued; none ever had two alive at once (a message
            # may expire between two samples, so not every key is necessarily seen alive).
            assert ever_queued == set(keys), ever_queued
            assert live_per_key and max(live_per_key.values()) == 1, live_per_key
            # Leases ran out several times while nobody worked, yet the queue never held more than
            # one refresh per key; each outlived its lease and is still alive (`expires` is the
            # queued marker's life): still worth its one call, later.
            queued = queued_refreshes(redis)
            assert most_queued <= len(keys) and sorted(k for k, _ in queued) == sorted(keys), queued
            now = datetime.now().astimezone()
            assert all(expires is not None and expires > now for _, expires in queued), queued

            calls_before_return = stack.origin_stats()["calls"]
            stack.start_worker("w2", wait=True)

            def refreshed() -> bool:
                return all(stack.get("swr", k).json()["count"] >= 2 for k in keys)

            wait_until(refreshed, 15, "fresh refreshes after the workers returned")

        wait_until(lambda: not queued_refreshes(redis), 10, "the queue to drain")
        # The refreshes queued while nobody worked ran, one per key: none was discarded (which
        # cost a revocation each and made the next read enqueue the same refresh again), none
        # lost its lease to a read, and each was one origin call that wrote.
        assert worker_metric(stack, "herdless_refresh_total", outcome="expired") == 0
        assert worker_metric(stack, "herdless_refresh_total", outcome="lost_lease") == 0
        written = worker_metric(stack, "herdless_refresh_total", outcome="written")
        calls_since = stack.origin_stats()["calls"] - calls_before_return
        assert calls_since == worker_metric(stack, "herdless_origin_calls_total", outcome="ok") == written
        assert written >= len(keys)


def test_a_worker_stopped_mid_refresh_leaves_at_most_one_queued_refresh_per_key(tmp_path: Path) -> None:
    # The case that used to break it: reads keep going on 30 keys (TTL 2 s, lease 3 s) while the
    # worker's process group gets SIGTERM (make run's stop, systemd, Kubernetes) with refreshes
    # running. Prefork children die mid-refresh and Celery hands their messages back to the
    # queue (reject_on_worker_lost); their queued markers were already cleared when the
    # refreshes started, so reads enqueued a second refresh for those keys.
    env = {
        "LEASE_TTL_SECONDS": "3",
        "ORIGIN_LATENCY_MS": "400",
        "WORKER_POOL": "prefork",
        "WORKER_CONCURRENCY": "2",
    }
    keys = [f"q{i}" for i in range(30)]
    with stack_for(tmp_path, Q_NAMESPACE, env) as stack:
        for key in keys:
            assert stack.get("q", key).status_code == 200
        with TrafficLoop([stack.url("q", key) for key in keys], pause=0.005):
            # Refreshes are running when the worker is told to stop.
            wait_until(lambda: stack.origin_stats()["in_flight"] > 0, 15, "a refresh at the origin", 0.01)
            worker = stack.procs["w1"]
            worker.send(signal.SIGTERM)
            wait_until(lambda: not worker.alive(), 30, "the worker to exit")
            stopped = time.monotonic()
            redis = stack.redis.client()
            worst: Counter[str] = Counter()
            while time.monotonic() - stopped < 8:
                per_key = Counter(key for key, _ in queued_refreshes(redis))
                worst |= per_key
                time.sleep(0.25)
        assert worst, "no refresh was ever queued: the test did not exercise the queue"
        assert max(worst.values()) == 1, {k: n for k, n in worst.items() if n > 1}
