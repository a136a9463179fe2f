"""The pure parts of the benches: steady-state figures, histogram quantiles, the refresh limit, nginx."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from demo_origin import OriginServer, OriginState
from loadtest.launcher import nginx_ttl, render_nginx_conf
from loadtest.openloop import X_CACHE_CODES, Records, RunConfig, RunResult
from loadtest.probes import (
    bucket_delta,
    histogram_quantile,
    parse_histogram_buckets,
    parse_queue_depth,
    quantile_bucket,
)
from loadtest.refreshbench import BenchSettings, refresh_limit
from loadtest.steady import (
    NGINX_X_CACHE,
    fresh_share,
    hot_keys,
    misses_for_served_keys,
    served_age_p99,
    worker_verdict,
)
from loadtest.summary import summarize

HIT, EARLY, STALE, MISS = (X_CACHE_CODES.index(n) for n in ("HIT", "EARLY", "STALE", "MISS"))
FRESH_CODES = [HIT, EARLY]


def test_fresh_share_counts_hit_and_early_over_every_answer() -> None:
    x = np.array([HIT, EARLY, STALE, MISS, HIT, X_CACHE_CODES.index("")], dtype=np.int8)
    assert fresh_share(x, FRESH_CODES) == pytest.approx(3 / 6)
    assert fresh_share(x, FRESH_CODES, np.array([True, True, False, False, False, False])) == 1.0
    assert fresh_share(x[:0], FRESH_CODES) is None


def test_hot_keys_are_those_read_at_least_ten_times_a_second_in_the_counted_period() -> None:
    # key 0: 30 reads in the 2 counted seconds (15/s), key 1: 19 reads (9.5/s), key 2: only read during warm-up
    keys = np.array([0] * 30 + [1] * 19 + [2] * 50, dtype=np.int32)
    counted = np.array([True] * 49 + [False] * 50)
    assert hot_keys(keys, counted, seconds=2.0).tolist() == [0]
    assert hot_keys(keys, counted, seconds=2.0, threshold_rps=9.5).tolist() == [0, 1]
    assert hot_keys(keys, np.zeros(99, dtype=bool), seconds=2.0).tolist() == []


def test_served_age_p99_ignores_answers_without_an_age() -> None:
    ages = np.array([0.0] * 98 + [4.0, 9.0, math.nan, -1.0])
    assert served_age_p99(ages) == pytest.approx(float(np.percentile([0.0] * 98 + [4.0, 9.0], 99)))
    assert served_age_p99(np.array([math.nan])) is None


def test_a_miss_counts_against_the_cache_only_after_the_key_was_served() -> None:
    keys = np.array([0, 0, 0, 1, 1])
    sent = np.array([0.0, 0.05, 0.5, 0.0, 0.6])
    done = np.array([0.2, 0.21, 0.51, 0.1, 0.7])
    ok = np.array([True, True, True, False, True])
    # key 0: the second MISS was sent before the first answer came back (a cold-miss waiter), the third after;
    # key 1: its first request failed, so its later MISS is a first fill
    is_miss = np.array([True, True, True, True, True])
    assert misses_for_served_keys(keys, sent, done, ok, is_miss) == 1


def test_worker_is_saturated_when_the_queue_is_often_busy_or_refreshes_lag_past_the_ttl() -> None:
    assert worker_verdict([0, 0, 0, 0, 1], 0.2, ttl=5).saturated is False  # busy in exactly 20%: not above
    busy = worker_verdict([0, 3, 2, 0, 1], 0.2, ttl=5)
    assert busy.saturated and "60%" in busy.reasons[0]
    lagging = worker_verdict([0, 0, 0], 7.5, ttl=5, lag_p99_bucket=(5, 10))
    assert lagging.saturated and "5-10s bucket" in lagging.reasons[0]
    assert worker_verdict([None, None], None, ttl=5).saturated is None


PAGE = """# HELP herdless_refresh_lag_seconds lag
# TYPE herdless_refresh_lag_seconds histogram
herdless_refresh_lag_seconds_bucket{namespace="a",le="0.1"} 4.0
herdless_refresh_lag_seconds_bucket{namespace="a",le="1.0"} 8.0
herdless_refresh_lag_seconds_bucket{namespace="a",le="+Inf"} 8.0
herdless_refresh_lag_seconds_count{namespace="a"} 8.0
herdless_refresh_lag_seconds_sum{namespace="a"} 2.0
herdless_refresh_lag_seconds_bucket{namespace="b",le="0.1"} 1.0
herdless_refresh_lag_seconds_bucket{namespace="b",le="1.0"} 1.0
herdless_refresh_lag_seconds_bucket{namespace="b",le="+Inf"} 2.0
herdless_refresh_lag_seconds_count{namespace="b"} 2.0
herdless_refresh_lag_seconds_sum{namespace="b"} 30.0
# HELP herdless_queue_depth depth
# TYPE herdless_queue_depth gauge
herdless_queue_depth{queue="herdless"} 2.0
herdless_queue_depth{queue="other"} 1.0
"""


def test_refresh_lag_histogram_is_summed_over_namespaces_and_read_like_prometheus() -> None:
    buckets = parse_histogram_buckets(PAGE)
    assert buckets == [(0.1, 5.0), (1.0, 9.0), (math.inf, 10.0)]
    assert parse_queue_depth(PAGE) == 3.0
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)  # rank 5 ends the first bucket
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.1 + 0.9 * (7 - 5) / 4)
    assert histogram_quantile(0.99, buckets) == 1.0  # in +Inf: the largest finite bound
    assert quantile_bucket(0.7, buckets) == (0.1, 1.0)
    assert histogram_quantile(0.99, []) is None
    before = [(0.1, 5.0), (1.0, 5.0), (math.inf, 5.0)]
    assert bucket_delta(buckets, before) == [(0.1, 0.0), (1.0, 4.0), (math.inf, 5.0)]


def test_refresh_limit_is_the_smaller_concurrency_over_the_origin_latency() -> None:
    assert refresh_limit(100, 50, 100) == 500.0
    assert refresh_limit(2, 50, 100) == 20.0
    assert refresh_limit(8, 8, 250) == 32.0
    with pytest.raises(ValueError):
        refresh_limit(1, 1, 0)
    settings = BenchSettings("prefork", 2, 50, 100, 5)
    assert settings.limit_per_s == 20.0
    assert settings.stack_env()["WORKER_POOL"] == "prefork"
    assert settings.stack_env()["WORKER_CONCURRENCY"] == "2"


def test_nginx_cache_statuses_map_onto_fresh_stale_and_miss() -> None:
    assert NGINX_X_CACHE["HIT"] == "HIT"
    assert {NGINX_X_CACHE[s] for s in ("UPDATING", "STALE")} == {"STALE"}
    assert {NGINX_X_CACHE[s] for s in ("MISS", "EXPIRED", "REVALIDATED", "BYPASS")} == {"MISS"}
    assert set(NGINX_X_CACHE.values()) <= set(X_CACHE_CODES)


def test_nginx_config_caches_before_the_origin_on_loopback_only(tmp_path: Path) -> None:
    conf = render_nginx_conf(tmp_path, 18080, 19000, 5.0)
    assert "listen 127.0.0.1:18080;" in conf
    assert "server 127.0.0.1:19000;" in conf
    assert f"proxy_cache_path {tmp_path}/cache " in conf
    for line in (
        "proxy_cache_valid 200 5s;",
        "proxy_cache_use_stale updating error timeout;",
        "proxy_cache_background_update on;",
        "proxy_cache_lock on;",
        "add_header X-Cache $upstream_cache_status always;",
    ):
        assert line in conf
    assert "user root;" not in conf and "user root;" in render_nginx_conf(tmp_path, 1, 2, 5, as_root=True)
    assert nginx_ttl(1.5) == "1500ms" and nginx_ttl(30) == "30s"


def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx): cannot check the rendered config")
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(tmp_path, 18080, 19000, 2.0, as_root=False))
    proc = subprocess.run(
        [nginx, "-t", "-e", str(tmp_path / "error.log"), "-c", str(conf), "-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr


def test_demo_origin_reports_peak_concurrent_calls_and_resets_it() -> None:
    state = OriginState(latency_ms=150, failure_rate=0)
    server = OriginServer(("127.0.0.1", 0), state)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        barrier = threading.Barrier(40)

        def call(i: int) -> int:
            barrier.wait()
            with urllib.request.urlopen(f"{base}/items/k{i}", timeout=10) as resp:
                return resp.status

        with ThreadPoolExecutor(40) as pool:
            assert set(pool.map(call, range(40))) == {200}
        stats = json.loads(urllib.request.urlopen(f"{base}/stats", timeout=5).read())
        assert stats["calls"] == 40 and stats["in_flight"] == 0
        assert 20 <= stats["max_in_flight"] <= 40  # all 40 sleep 150 ms together
        urllib.request.urlopen(urllib.request.Request(f"{base}/stats/reset", method="POST"), timeout=5).read()
        stats = json.loads(urllib.request.urlopen(f"{base}/stats", timeout=5).read())
        assert stats["max_in_flight"] == 0 and stats["calls"] == 0
    finally:
        server.shutdown()
        server.server_close()


def _steady_result() -> RunResult:
    """Key 0 read 20 times a second (hot), key 1 twice a second, for 4 s; warm-up 2 s; TTL 1 s."""
    rec = Records()
    for t10 in range(0, 400, 5):  # every 50 ms
        t = t10 / 100
        for key, every in ((0, 1), (1, 10)):
            if (t10 // 5) % every:
                continue
            rec.offset.append(t)
            rec.latency.append(0.002)
            rec.lag.append(0.0)
            rec.status.append(200)
            first = t == 0
            fresh = key == 0 and int(t * 20) % 4 != 0  # key 0: 3 of 4 fresh; key 1: always STALE
            rec.x_cache.append(MISS if first else HIT if fresh else STALE)
            rec.key.append(key)
            rec.age.append(0.5 if fresh else 1.5)
    cfg = RunConfig(rate=22, duration=4, keys=2, ttl=1.0, warmup=2.0, progress=False)
    return RunResult(
        config=cfg,
        run_id="t",
        key_prefix="run-t-",
        started_at=1_800_000_000.0,
        records=rec,
        error_kinds=Counter(),
        key_names=["run-t-k0", "run-t-k1"],
        seconds=4,
        origin_calls_per_second=[2, 2, 2, 2],
        origin_total_per_second=[2, 2, 2, 2],
        queue_depth_per_second=[0.0, 1.0, 0.0, 0.0],
        origin_calls=9,  # 8 during the load, 1 more finished while draining
        origin_calls_all_keys=9,
        origin_per_key={},
        scheduled=len(rec),
        sent_elapsed=3.95,
        elapsed=4.0,
        peak_connections=1,
        connects=1,
        waited_for_connection=0,
        max_age_seen=1,
        origin_cumulative=[0, 2, 4, 6, 8],
        drain={"waited_s": 0.3, "complete": True, "queue_depth": 0.0, "origin_in_flight": 0, "timeout_s": 30},
        refresh_lag_p99_s=0.2,
    )


def test_steady_state_counts_after_warm_up_and_bills_the_drained_origin_calls() -> None:
    st = summarize(_steady_result())["steady"]
    assert st["from_s"] == 2.0 and st["seconds"] == 2.0
    assert st["hot_keys"] == 1  # key 0 at 20/s; key 1 at 2/s is not hot
    assert st["hot_fresh_share"] == pytest.approx(0.75)
    assert st["fresh_share"] == pytest.approx(30 / 44, abs=1e-4)  # 40 reads of key 0 (30 fresh) + 4 of key 1
    assert st["served_age_p99_s"] == pytest.approx(1.5)
    assert st["origin_calls"] == 9 - 4  # calls after offset 2 s, including the one finished while draining
    assert st["key_windows"] == 4  # 2 keys x windows 2 and 3
    assert st["calls_per_key_window"] == pytest.approx(5 / 4)
    assert st["miss_for_served_key"] == 0 and st["errors"] == 0
    assert st["throughput_rps"] == pytest.approx(22.0)


def test_worker_queue_is_judged_after_warm_up_only() -> None:
    # the one busy sample (at offset 2 s) was taken while the cold keys were being filled
    worker = summarize(_steady_result())["worker"]
    assert worker["saturated"] is False and worker["queue_busy_share"] == 0.0
