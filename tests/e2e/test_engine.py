"""The refresh engine end to end: real redis-server, demo origin, gunicorn (2 workers) and Celery."""

from __future__ import annotations

import collections
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from shared.coldwait import CONNECTED_SLICE
from shared.keys import EntryKeys
from shared.origin import encode_key_for_path
from tests.e2e.conftest import ENGINE_NAMESPACES
from tests.faults.fixture_origin import FixtureOrigin
from tests.faults.observe import web_metric, worker_metric
from tests.origins import OVERSIZED_BYTES
from tests.stack import UNACKED, Stack, cold_herd, stack_for, wait_until

ADMIN = "s3cret-admin-token-757224ba37701e155c211"


STACK_NAMESPACES = ENGINE_NAMESPACES
# The shipped worker: gevent pool, 100 refreshes at once.
STACK_ENV = {
    "WEB_CONCURRENCY": "2",
    "ORIGIN_LATENCY_MS": "150",
    "ADMIN_TOKEN": ADMIN,
    "NEGATIVE_TTL_SECONDS": "30",
}


def calls_for(stack: Stack, key: str) -> int:
    return int(stack.origin_stats()["per_key"].get(key, 0))


def raw_get(stack: Stack, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send a path byte-for-byte (requests would re-encode it)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.web_port, timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def test_a_cold_herd_of_300_costs_the_origin_one_call(stack: Stack) -> None:
    key = "herd-key"
    results = cold_herd(stack, "herd", [key], 300)
    statuses = {status for _, status, _ in results}
    bodies = {body for _, _, body in results}
    assert statuses == {200}, statuses
    assert len(bodies) == 1
    assert calls_for(stack, key) == 1
    # Everyone either waited for that one refresh or arrived after it landed.
    assert stack.get("herd", key).headers["X-Cache"] == "HIT"


@dataclass
class HotKeyRun:
    """What 10 s of back-to-back reads of one hot key (namespace `fast`, 1 s TTL) looked like."""

    outcomes: list[str]  # X-Cache of every read after the first
    windows: int  # distinct wall-clock seconds (TTL windows) the reads spanned
    calls: int  # origin calls for the key, the first included
    draws: set[float]  # XFetch draws `u` found stored with the key's successive values
    misses: float  # reads of the namespace answered as MISS (waited for a refresh)
    early_enqueued: float  # refreshes enqueued by an EARLY read


@pytest.fixture(scope="module")
def hot_key(stack: Stack) -> HotKeyRun:
    key = "continuous"
    entry = EntryKeys.of("fast", key).entry
    redis = stack.redis.client()
    session = requests.Session()
    first = session.get(stack.url("fast", key), timeout=10)
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    start = time.monotonic()
    windows: set[int] = set()
    outcomes: list[str] = []
    draws: set[float] = set()
    while time.monotonic() - start < 10:
        r = session.get(stack.url("fast", key), timeout=10)
        assert r.status_code == 200
        outcomes.append(r.headers["X-Cache"])
        windows.add(int(time.time()))  # 1 s TTL: one window per wall-clock second
        u = redis.hget(entry, "u")
        if u is not None:
            draws.add(float(u))
        time.sleep(0.01)
    session.close()
    return HotKeyRun(
        outcomes=outcomes,
        windows=len(windows),
        calls=calls_for(stack, key),
        draws=draws,
        misses=web_metric(stack, "herdless_requests_total", namespace="fast", outcome="miss"),
        early_enqueued=web_metric(stack, "herdless_refresh_enqueued_total", namespace="fast", reason="early"),
    )


def test_a_cold_miss_waiter_is_woken_by_the_published_refresh(stack: Stack) -> None:
    wakeups = web_metric(stack, "herdless_cold_wakeups_total", namespace="herd")
    t0 = time.monotonic()
    r = stack.get("herd", "woken-by-the-channel")
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
    # Woken by the "ready" message on its web process's subscription, not by a re-read on a
    # timer (every 0.2 s while the subscription is down, every CONNECTED_SLICE while it is up).
    assert web_metric(stack, "herdless_cold_wakeups_total", namespace="herd") == wakeups + 1
    assert elapsed < CONNECTED_SLICE


def test_a_hot_key_costs_one_origin_call_per_ttl_window_and_never_waits(hot_key: HotKeyRun) -> None:
    # XFetch starts each refresh a little before expiry (d*beta within 20 %, d ~ 0.15 s here,
    # more on a loaded machine, and never more than a quarter of the TTL), and the new value's
    # TTL runs from its write: a key read continuously is refreshed every 1 s - d*beta + d, about
    # once per 1 s window (one loaded run made 13 calls in 11 windows before the head start was
    # bounded). A stampede would be one call per read (~800).
    assert hot_key.calls <= 1.5 * hot_key.windows, (hot_key.calls, hot_key.windows)
    assert hot_key.calls >= 5, "the key should have been refreshed about once a second"
    # Only a MISS waits for the origin; a hot key's value is always servable (fresh or stale),
    # so no read of it waited, in any web process: the namespace's only MISS is the first read.
    assert "MISS" not in hot_key.outcomes
    assert hot_key.misses == 1


def test_a_hot_key_is_refreshed_early_by_the_draw_its_writer_stored(hot_key: HotKeyRun) -> None:
    # No draw is injected here: each refresh stores its own u. A writer that always stored
    # u = 1 would make `now - d*beta*ln(u) >= soft` mean `now >= soft`: never EARLY, only STALE.
    assert hot_key.outcomes.count("EARLY") > 0, collections.Counter(hot_key.outcomes)
    assert hot_key.early_enqueued > 0
    # Every value carries a draw of its own, in (0, 1].
    assert len(hot_key.draws) >= 3, hot_key.draws
    assert all(0 < u <= 1 for u in hot_key.draws), hot_key.draws


def test_stale_value_is_served_while_the_refresh_runs(stack: Stack) -> None:
    key = "swr-key"
    v1 = stack.get("swr", key).json()
    assert v1["count"] == 1

    def stale_read() -> requests.Response | None:
        t0 = time.perf_counter()
        r = stack.get("swr", key)
        r.elapsed_s = time.perf_counter() - t0  # type: ignore[attr-defined]
        return r if r.headers["X-Cache"] == "STALE" else None

    stale = wait_until(stale_read, 10, "the value to go stale")
    assert stale.status_code == 200 and stale.json() == v1
    assert stale.elapsed_s < 0.1  # served at once, not after the 150 ms origin call
    fresh = wait_until(lambda: (r := stack.get("swr", key)).json()["count"] == 2 and r, 10, "the refreshed value")
    assert fresh.headers["X-Cache"] in ("HIT", "STALE")
    assert calls_for(stack, key) == 2


def test_lock_strategy_waits_for_the_single_refresher_instead_of_serving_stale(stack: Stack) -> None:
    key = "lock-key"
    first = stack.get("lock", key)
    assert first.json()["count"] == 1
    assert first.headers["Cache-Control"].endswith("stale-while-revalidate=0")
    wait_until(lambda: stack.get("lock", key).json()["count"] == 2, 10, "a refresh under the lock strategy")
    r = stack.get("lock", key)
    assert r.headers["X-Cache"] in ("HIT", "MISS")
    assert r.headers["X-Cache"] != "STALE"


def redis_now_ms(stack: Stack) -> int:
    seconds, micros = stack.redis.client().time()
    return int(seconds) * 1000 + int(micros) // 1000


def stored_soft_ms(stack: Stack, namespace: str, key: str) -> int:
    soft = stack.redis.client().hget(EntryKeys.of(namespace, key).entry, "soft")
    assert soft is not None, f"nothing stored for {namespace}/{key}"
    return int(soft)


def test_lock_strategy_herd_at_expiry_waits_for_one_shared_refresh(stack: Stack) -> None:
    key = "lock-herd"
    assert stack.get("lock-herd", key).json()["count"] == 1
    soft = stored_soft_ms(stack, "lock-herd", key)
    wait_until(lambda: redis_now_ms(stack) >= soft, 10, "the value to expire on the Redis clock")
    results = cold_herd(stack, "lock-herd", [key], 50)
    assert {status for _, status, _ in results} == {200}, results[:3]
    # Nobody got the expired value: every reader waited for the one refresh and shares its value.
    assert {json.loads(body)["count"] for _, _, body in results} == {2}
    assert calls_for(stack, key) == 2


def test_naive_strategy_calls_the_origin_from_the_web_tier(stack: Stack) -> None:
    key = "naive-herd"
    barrier = threading.Barrier(20)

    def one() -> int:
        barrier.wait()
        return requests.get(stack.url("naive", key), timeout=30).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        assert set(pool.map(lambda _: one(), range(20))) == {200}
    # The baseline stampedes: concurrent misses each reach the origin.
    assert calls_for(stack, key) > 1


def test_etag_and_if_none_match(stack: Stack) -> None:
    r = stack.get("herd", "etag-key")
    etag = r.headers["ETag"]
    again = stack.get("herd", "etag-key", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert stack.get("herd", "etag-key", headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    assert stack.get("herd", "etag-key", headers={"If-None-Match": "*"}).status_code == 304
    assert stack.get("herd", "etag-key", headers={"If-None-Match": '"other"'}).status_code == 200
    assert "max-age=" in again.headers["Cache-Control"]
    assert int(again.headers["Age"]) >= 0


def test_origin_404_is_cached_as_a_negative_entry(stack: Stack) -> None:
    r = stack.get("herd", "missing-thing")
    # The read that waited for the origin's 404 was a miss; the cached 404 answers NEGATIVE after.
    assert r.status_code == 404 and r.json()["error"] == "not_found" and r.headers["X-Cache"] == "MISS"
    r2 = stack.get("herd", "missing-thing")
    assert r2.status_code == 404 and r2.headers["X-Cache"] == "NEGATIVE"
    assert calls_for(stack, "missing-thing") == 1


def test_a_cached_404_expires_after_negative_ttl_and_the_origin_is_asked_again(stack: Stack) -> None:
    key = "missing-for-a-while"  # namespace neg: negative_ttl_seconds = 1
    assert stack.get("neg", key).status_code == 404
    soft = stored_soft_ms(stack, "neg", key)
    # Until the negative entry's moment on the Redis clock, the cached 404 answers alone.
    while True:
        r = stack.get("neg", key)
        answered_before_expiry = redis_now_ms(stack) < soft
        if not answered_before_expiry:
            break
        assert r.status_code == 404 and r.headers["X-Cache"] == "NEGATIVE"
        assert calls_for(stack, key) == 1
        time.sleep(0.05)
    # The first read after it asks the origin again (and caches the new 404).
    wait_until(lambda: redis_now_ms(stack) >= soft, 5, "the negative entry to expire")
    again = stack.get("neg", key)
    assert again.status_code == 404 and again.json()["error"] == "not_found"
    assert calls_for(stack, key) == 2
    assert stored_soft_ms(stack, "neg", key) > soft


def test_python_callable_origin(stack: Stack) -> None:
    r = stack.get("py", "from-python")
    assert r.status_code == 200 and r.json()["key"] == "from-python"
    assert r.headers["Content-Type"].startswith("application/json")
    assert stack.get("py", "missing-callable").status_code == 404
    failed = stack.get("py", "boom-now")
    assert failed.status_code == 502 and failed.json()["error"] == "origin_error"
    # The worker's one line about it carries the callable's own message, not just its type. It
    # is logged after the failure was recorded, and the record already woke the reader.
    wait_until(
        lambda: "RuntimeError: the origin callable failed" in stack.procs["w1"].output(),
        10,
        "the worker's line about the failed call",
    )
    worker_log = stack.procs["w1"].output()
    assert worker_log.count("refresh of py/'boom-now' failed") == 1
    assert "failed with RuntimeError" not in worker_log  # nor gevent's traceback of the pool thread


# body: what a 200 carries; for a 502, the error code that says which failure it was.
@pytest.mark.parametrize(
    ("key", "status", "content_type", "body"),
    [
        ("bytes-k", 200, "application/octet-stream", b"\x00raw bytes\xff"),
        ("str-k", 200, "text/plain; charset=utf-8", "text for str-k \u2713".encode()),
        ("dict-k", 200, "application/json", b'{"key":"dict-k"}'),
        ("lookup-k", 404, "application/json", None),
        ("nonjson-k", 502, "application/json", "origin_error"),
        ("oversized-k", 502, "application/json", "origin_too_large"),
    ],
)
def test_a_python_callable_origin_answer_is_stored_by_its_type(
    stack: Stack, key: str, status: int, content_type: str, body: bytes | str | None
) -> None:
    r = stack.get("py-typed", key)
    assert r.status_code == status, r.text[:200]
    assert r.headers["Content-Type"] == content_type
    if isinstance(body, bytes):
        assert r.content == body
        assert stack.get("py-typed", key).headers["X-Cache"] == "HIT"
    elif status == 404:
        assert r.json()["error"] == "not_found"  # a LookupError is "no such key", cached
        assert stack.get("py-typed", key).headers["X-Cache"] == "NEGATIVE"
    else:
        assert r.json()["error"] == body  # never stored, never served
        assert len(r.content) < OVERSIZED_BYTES
        assert stack.redis.client().hget(EntryKeys.of("py-typed", key).entry, "v") is None


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/v1/cache/herd/a%00b", 400, "invalid_key"),
        ("/v1/cache/herd/line%0D%0Abreak", 400, "invalid_key"),
        ("/v1/cache/herd/line%0Abreak", 400, "invalid_key"),
        ("/v1/cache/herd/tab%09", 400, "invalid_key"),
        ("/v1/cache/herd/" + "x" * 600, 400, "invalid_key"),
        ("/v1/cache/herd/%FF%FE", 400, "invalid_key"),
        ("/v1/cache/herd/", 400, "invalid_key"),
        ("/v1/cache/nope/key", 404, "unknown_namespace"),
        ("/v1/cache/NOT..valid/key", 404, "unknown_namespace"),
    ],
)
def test_bad_input_gets_a_json_4xx(stack: Stack, path: str, status: int, error: str) -> None:
    got, headers, body = raw_get(stack, path)
    assert got == status, (got, body)
    assert headers["Content-Type"].startswith("application/json")
    payload = json.loads(body)
    assert payload["error"] == error and payload["detail"]
    assert "Traceback" not in body.decode(errors="replace")


def test_admin_calls_without_or_with_a_wrong_token_are_refused_and_change_nothing(stack: Stack) -> None:
    key = "guarded"
    before = stack.get("herd", key).json()
    url = stack.url("herd", key)
    assert requests.delete(url, timeout=5).status_code == 401
    wrong = requests.delete(url, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
    assert ADMIN not in wrong.text
    assert requests.post(url + "/refresh", timeout=5).status_code == 401
    assert requests.post(url + "/refresh", headers={"Authorization": "Basic x"}, timeout=5).status_code == 401
    after = stack.get("herd", key)
    assert after.json() == before and after.headers["X-Cache"] == "HIT"
    assert calls_for(stack, key) == 1


def test_admin_refresh_and_purge(stack: Stack) -> None:
    key = "admin-managed"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    url = stack.url("herd", key)
    assert stack.get("herd", key).json()["count"] == 1
    r = requests.post(url + "/refresh", headers=auth, timeout=5)
    assert r.status_code == 202 and r.json()["enqueued"] is True
    wait_until(lambda: stack.get("herd", key).json()["count"] == 2, 10, "the manual refresh")
    soft = requests.delete(url + "?soft=1", headers=auth, timeout=5)
    assert soft.status_code == 204
    stale = stack.get("herd", key)
    assert stale.headers["X-Cache"] == "STALE" and stale.json()["count"] == 2
    wait_until(lambda: stack.get("herd", key).json()["count"] == 3, 10, "the refresh after a soft purge")
    assert requests.delete(url, headers=auth, timeout=5).status_code == 204
    cold = stack.get("herd", key)
    assert cold.headers["X-Cache"] == "MISS" and cold.json()["count"] == 4


@pytest.mark.parametrize("key", ["../../etc/passwd", "@evil.example/x", "?x=1#y", "{ns:k}", "ключ/ü", "..", "a b"])
def test_awkward_keys_are_cached_and_reach_the_origin_percent_encoded(stack: Stack, key: str) -> None:
    r = stack.get("herd", key)
    assert r.status_code == 200, r.text
    assert r.json()["key"] == key
    assert stack.get("herd", key).headers["X-Cache"] == "HIT"
    stats = stack.origin_stats()
    assert stats["per_key"][key] == 1
    assert "/items/" + encode_key_for_path(key) in stats["paths"]


def test_health_and_readiness(stack: Stack) -> None:
    assert requests.get(stack.web_url + "/healthz", timeout=5).json()["status"] == "ok"
    ready = requests.get(stack.web_url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "broker": "ok"}


def test_invalid_settings_stop_the_process_naming_the_variable(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.stack import ROOT

    for name, value in [("CACHE_TTL_SECONDS", "-1"), ("XFETCH_BETA", "-0.5"), ("REDIS_URL", "http://x")]:
        proc = subprocess.run(
            [sys.executable, "-c", "from shared.settings import load_settings; load_settings()"],
            env={"PATH": "/usr/bin:/bin", name: value},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2 and name in proc.stderr, proc.stderr
    # The worker stops at start, naming the variable, before Celery is ever started.
    for name, value in [("WORKER_POOL", "fork"), ("WORKER_CONCURRENCY", "0"), ("ORIGIN_MAX_CONCURRENCY", "-1")]:
        proc = subprocess.run(
            [sys.executable, "-m", "workers"],
            env={"PATH": "/usr/bin:/bin", name: value},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2 and f"{name}={value!r}" in proc.stderr, proc.stderr
    bad_ns = tmp_path / "ns.toml"
    bad_ns.write_text('[namespaces.x]\nstrategy = "yolo"\norigin = "http://h/{key}"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "web/gunicorn.conf.py", "web.app:create_app()"],
        env={"PATH": "/usr/bin:/bin", "NAMESPACES_FILE": str(bad_ns), "WEB_PORT": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0 and "strategy" in proc.stderr, proc.stderr[-2000:]


def test_fifty_concurrent_refreshes_of_one_origin_overlap_in_one_worker_process(tmp_path: Path) -> None:
    # One gevent worker process; an origin that holds every call until released. Fifty calls at
    # the origin at once show that the refreshes overlap (the old breaker held a lock across the
    # call: one at a time). Held, not slow: on a busy machine fifty requests need more than a
    # 1 s origin call to arrive, and the peak of a slow origin then fell short of 50.
    with FixtureOrigin() as gated:
        namespaces = f'[namespaces.gated]\norigin = "{gated.base_url}/v/{{key}}"\norigin_timeout_seconds = 60\n'
        env = {"COLD_WAIT_TIMEOUT_SECONDS": "60", "ORIGIN_MAX_CONCURRENCY": "50", "WORKER_CONCURRENCY": "100"}
        with stack_for(tmp_path, namespaces, env) as stack:
            gated.hold()
            with ThreadPoolExecutor(50) as pool:
                answers = [pool.submit(stack.get, "gated", f"overlap-{i}", timeout=90) for i in range(50)]
                try:
                    wait_until(lambda: gated.in_flight == 50, 60, "fifty refreshes at the origin at once")
                finally:
                    gated.release()
                assert [a.result().status_code for a in answers] == [200] * 50
            assert len(gated.calls) == 50 and gated.max_in_flight == 50


def test_a_cold_start_of_300_keys_is_enqueued_and_acknowledged_without_exhausting_broker_connections(
    stack: Stack,
) -> None:
    # kombu's Redis transport opens at most 10 connections per process unless told otherwise: a
    # web process enqueueing hundreds of cold misses at once answered some with 503, and a
    # gevent worker finishing many refreshes at once could not acknowledge them.
    keys = [f"cold-start-{i}" for i in range(300)]
    ok_before = worker_metric(stack, "herdless_origin_calls_total", namespace="herd", outcome="ok")
    results = cold_herd(stack, "herd", keys, 300)
    assert [status for _, status, _ in results if status != 200] == []
    per_key = stack.origin_stats()["per_key"]
    assert all(per_key.get(key, 0) >= 1 for key in keys)
    # Exactly one successful origin call per key: no value is refreshed again as soon as it
    # landed. A call that failed under the burst is retried after its cooldown; it shows in
    # per_key, but not here.
    wait_until(
        lambda: (
            worker_metric(stack, "herdless_origin_calls_total", namespace="herd", outcome="ok") - ok_before >= len(keys)
        ),
        10,
        "every key's successful origin call to be counted",
    )
    ok = worker_metric(stack, "herdless_origin_calls_total", namespace="herd", outcome="ok") - ok_before
    assert ok == len(keys), {k: per_key.get(k) for k in keys if per_key.get(k) != 1}
    worker_log = stack.procs["w1"].output()
    assert "Couldn't ack" not in worker_log and "Too many connections" not in worker_log
    redis = stack.redis.client()
    wait_until(lambda: redis.hlen(UNACKED) == 0, 10, "every refresh to be acknowledged")


# -- keys from the raw request URI (gunicorn's RAW_URI) -----------------------------------------


def _entry(stack: Stack, namespace: str, key: str) -> dict[bytes, bytes]:
    return stack.redis.client().hgetall(EntryKeys.of(namespace, key).entry)  # type: ignore[no-any-return]


def test_an_encoded_slash_is_part_of_the_key_and_a_literal_one_is_no_route(stack: Stack) -> None:
    status, _, body = raw_get(stack, "/v1/cache/herd/dir%2Ffile")
    assert status == 200 and json.loads(body)["key"] == "dir/file"
    assert stack.origin_stats()["per_key"]["dir/file"] == 1

    status, headers, body = raw_get(stack, "/v1/cache/herd/dir/file")
    assert status == 404, body
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"] == "not_found" and "%2F" in json.loads(body)["detail"]
    # Neither half became a key of its own, nor reached the origin.
    assert not _entry(stack, "herd", "dir") and not _entry(stack, "herd", "file")
    assert {"dir", "file"}.isdisjoint(stack.origin_stats()["per_key"])


def test_an_encoded_slash_refresh_is_a_key_never_the_refresh_route(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert stack.get("herd", "ambiguous").json()["count"] == 1
    # Once this path refreshed the key "ambiguous"; now it names no route at all.
    r = requests.post(f"{stack.web_url}/v1/cache/herd/ambiguous%2Frefresh", headers=auth, timeout=5)
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
    # The key "ambiguous/refresh" is refreshed at its own refresh route.
    r = requests.post(f"{stack.web_url}/v1/cache/herd/ambiguous%2Frefresh/refresh", headers=auth, timeout=5)
    assert r.status_code == 202 and r.json()["enqueued"] is True, r.text
    wait_until(lambda: calls_for(stack, "ambiguous/refresh") == 1, 10, "the refresh of the key 'ambiguous/refresh'")
    # (A read may still find that refresh writing, and wait for it: never a second origin call.)
    assert stack.get("herd", "ambiguous/refresh").json()["key"] == "ambiguous/refresh"
    assert calls_for(stack, "ambiguous/refresh") == 1
    assert calls_for(stack, "ambiguous") == 1
    assert stack.get("herd", "ambiguous").json()["count"] == 1


def test_a_query_string_is_refused_and_the_value_is_left_alone(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    key = "queried"
    assert stack.get("herd", key).json()["count"] == 1
    stored = _entry(stack, "herd", key)
    url = stack.url("herd", key)
    refusals = [
        ("GET", raw_get(stack, f"/v1/cache/herd/{key}?x=2")),
        ("HEAD", requests.head(url + "?x=2", timeout=5)),
        ("POST refresh", requests.post(url + "/refresh?now=1", headers=auth, timeout=5)),
        ("DELETE", requests.delete(url + "?soft=maybe", headers=auth, timeout=5)),
        ("DELETE", requests.delete(url + "?hard=1", headers=auth, timeout=5)),
        ("GET meta", requests.get(url + "/meta?x=1", headers=auth, timeout=5)),
    ]
    for what, answer in refusals:
        if isinstance(answer, tuple):
            status, body = answer[0], answer[2]
        else:
            status, body = answer.status_code, answer.content
        assert status == 400, (what, status, body)
        if what != "HEAD":
            assert json.loads(body)["error"] == "query_not_allowed", (what, body)
    assert _entry(stack, "herd", key) == stored, "a refused request changed the stored value"
    assert calls_for(stack, key) == 1

    # The one query a cache route takes: purge's ?soft=1.
    assert requests.delete(url + "?soft=1", headers=auth, timeout=5).status_code == 204
    assert stack.get("herd", key).headers["X-Cache"] == "STALE"
    wait_until(lambda: calls_for(stack, key) == 2, 10, "the refresh after the soft purge")


# -- last-minute rates on the status page ------------------------------------------------------


def _web_requests_by_process(stack: Stack, namespace: str) -> dict[str, float]:
    """herdless_requests_total of one namespace in each gunicorn worker's own metrics file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts: dict[str, float] = {}
    for path in Path(stack.tmp / "metrics").glob("herdless-web-*/counter_*.db"):
        total = sum(
            sample.value
            for family in MultiProcessCollector.merge([str(path)])
            for sample in family.samples
            if sample.name == "herdless_requests_total" and sample.labels.get("namespace") == namespace
        )
        if total:
            counts[path.stem] = total
    return counts


def test_status_rates_count_the_last_minute_of_both_gunicorn_workers(stack: Stack) -> None:
    def last_minute() -> dict:
        return requests.get(stack.web_url + "/status.json", timeout=5).json()["last_minute"]["rates"]

    assert last_minute()["answers_total"] == 0
    assert stack.get("rates", "r").headers["X-Cache"] == "MISS"
    reads = 1
    # New connections until both gunicorn processes have answered some of the reads.
    while len(_web_requests_by_process(stack, "rates")) < 2:
        assert reads < 400, f"one gunicorn process answered every read: {_web_requests_by_process(stack, 'rates')}"
        for _ in range(10):
            r = requests.get(stack.url("rates", "r"), headers={"Connection": "close"}, timeout=5)
            assert r.headers["X-Cache"] == "HIT"
        reads += 10
    per_process = _web_requests_by_process(stack, "rates")
    assert sum(per_process.values()) == reads

    def counted() -> dict | None:
        rates = last_minute()
        return rates if rates["answers_total"] == reads and rates["origin_calls_total"] == 1 else None

    rates = wait_until(counted, 10, f"the last minute to show {reads} answers and 1 origin call")
    assert rates["answers"] == {"miss": 1, "hit": reads - 1}
    assert rates["origin_calls"] == {"ok": 1}
    assert rates["fresh_share"] == pytest.approx((reads - 1) / reads)
    assert rates["answers_per_second"] == pytest.approx(reads / 60)


def test_the_public_status_page_names_no_origin_host(stack: Stack) -> None:
    text = requests.get(stack.web_url + "/status.json", timeout=5).text
    assert f"127.0.0.1:{stack.origin_port}" not in text
    assert "tests.origins" not in text  # nor a callable origin's module
