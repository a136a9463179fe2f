"""A real Prometheus scraping a running stack evaluates every dashboard query and alert expression."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import requests

from tests.stack import PYTHON, Proc, Stack, free_port, stack_for, wait_until

from .prometheus_server import PrometheusServer
from .queries import REPO, PanelQuery, alert_rules, panel_queries, to_promql

ADMIN = "monitoring-admin-token-14637963221ac0876"
# Short TTLs so one test run sees misses, hits and stale answers; a quick origin keeps it fast;
# a breaker that opens at the first failure and may close a second later.
STACK_ENV = {
    "CACHE_TTL_SECONDS": "1",
    "ORIGIN_LATENCY_MS": "20",
    "ADMIN_TOKEN": ADMIN,
    "BREAKER_FAIL_MAX": "1",
    "BREAKER_RESET_TIMEOUT_SECONDS": "1",
}
# The shipped namespaces plus one whose values stay HITs (held in the near-cache) for a minute.
NAMESPACES = (
    (REPO / "namespaces.toml").read_text()
    + """
[namespaces.held]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60

[namespaces.batched]
origin = "${ORIGIN_BASE_URL}/items/{key}"
batch_origin = "${ORIGIN_BASE_URL}/items?ids={keys}"
cache_ttl_seconds = 60
"""
)
# Panels whose right value after this traffic is 0: nothing queued, nothing in flight, every
# breaker closed, no slot timeout (their own tests below check the 0).
ZERO_AT_REST = {
    "Queue depth/A",
    "Breaker state per origin/A",
    "Origin calls in flight/A",
    "Origin slot waits and timeouts/B",
    # Zero unless a web process cannot reach Redis (tests/faults/test_redis_outage.py moves them).
    "Redis unreachable: degraded answers/A",
    "Redis unreachable: degraded answers/B",
    # Zero unless something is refused (tests/security/test_cold_waiter_limit.py counts them).
    "Refused at once (503), by reason/A",
    # Zero once every group purge has completed.
    "Group purges: keys visited by outcome, members pending/B",
}

# Rates over the whole traffic window: the stack lives for seconds, not minutes.
RATE_INTERVAL = "30s"
TIME_RANGE = "1m"

# The user monitoring/prometheus.yml scrapes Flower as.
FLOWER_USER = "herdless"


@contextmanager
def running_flower(stack: Stack) -> Iterator[str]:
    """Flower as docker-compose runs it (monitoring/flowerconfig.py, basic auth) on the stack's
    broker; yields its metrics URL with the credentials in it."""
    port = free_port()
    password = "test-only-secret"
    # Flower keeps its metrics in-process: no multiprocess directory for it.
    env = {key: value for key, value in stack.env.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{password}"})
    args = [PYTHON, "-m", "celery", "-A", "workers.celery_app", "flower", "--conf=monitoring/flowerconfig.py"]
    flower = Proc("flower", args, env, stack.logdir)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: not flower.alive() or requests.get(f"{base}/healthcheck", timeout=1).ok, 30, "Flower")
        assert flower.alive(), f"Flower died:\n{flower.output()[-3000:]}"
        yield f"http://{FLOWER_USER}:{password}@127.0.0.1:{port}/metrics"
    finally:
        flower.stop()


def drive_traffic(stack: Stack, prometheus: PrometheusServer) -> None:
    """Cold keys, repeated hits and a stale read, spread over several scrapes so rates move."""
    http = requests.Session()

    def get(namespace: str, key: str) -> requests.Response:
        response = http.get(stack.url(namespace, key), timeout=15)
        assert response.status_code == 200, (namespace, key, response.status_code, response.text)
        return response

    # The breaker opens at the origin's first failure; once the origin is back, a probe after
    # the reset timeout closes it: the dashboard sees every transition and an origin error.
    stack.origin_config(failure_rate=1.0)
    tripped = http.get(stack.url("demo", "breaker-trip"), timeout=15)
    assert tripped.status_code == 502, tripped.text
    stack.origin_config(failure_rate=0.0)
    wait_until(
        lambda: http.get(stack.url("demo", "breaker-trip"), timeout=15).status_code == 200,
        timeout=15,
        what="the breaker to close after a good probe",
        interval=0.2,
    )

    # A value held in the near-cache, then purged: the purge's invalidation drops it.
    for _ in range(10):
        requests.get(stack.url("held", "purged"), timeout=15).raise_for_status()  # new connections: both web processes
    purge = http.delete(stack.url("held", "purged"), headers={"Authorization": f"Bearer {ADMIN}"}, timeout=15)
    assert purge.status_code == 204, purge.text
    # A tag purge (every value of "held" carries the namespace's group): its keys by outcome.
    get("held", "tagged")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    group = http.post(stack.web_url + "/v1/purge", json={"namespace": "held"}, headers=admin, timeout=15)
    assert group.status_code == 200 and group.json()["purged"] >= 1, group.text

    # A batch read of cold keys of a batch-origin namespace: one origin call for its keys.
    batched = http.post(stack.web_url + "/v1/cache/batched/batch", json={"keys": ["b1", "b2", "b3"]}, timeout=15)
    assert batched.status_code == 200 and {e["status"] for e in batched.json().values()} == {200}, batched.text
    for round_no in range(3):
        assert get("demo", f"cold-{round_no}").headers["X-Cache"] == "MISS"
        for _ in range(20):
            get("demo", "hot")
        prometheus.wait_for_scrape_after(time.time())

    # A value that never changes at the origin: past its 1 s TTL its refresh is answered 304.
    stack.origin_config(keys={"unchanging": {"value": "same"}})
    get("demo", "unchanging")
    wait_until(
        lambda: get("demo", "unchanging") and stack.origin_stats()["not_modified"] >= 1,
        timeout=10,
        what="a 304 revalidation",
        interval=0.2,
    )

    # swr never refreshes early, so once the 1 s soft TTL passes the next read is STALE.
    get("demo-swr", "aging")
    wait_until(
        lambda: get("demo-swr", "aging").headers["X-Cache"] == "STALE",
        timeout=10,
        what="a stale answer from demo-swr",
        interval=0.2,
    )
    # Two scrapes after the last request: a rate needs two samples of a series that appeared late.
    prometheus.wait_for_scrape_after(time.time())
    prometheus.wait_for_scrape_after(time.time())
    prometheus.wait_until_rules_evaluated()


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, prometheus: Callable[..., PrometheusServer]
) -> Iterator[PrometheusServer]:
    """Prometheus that has watched the stack serve every kind of traffic."""
    tmp = tmp_path_factory.mktemp("stack")
    with stack_for(tmp, NAMESPACES, STACK_ENV) as stack, running_flower(stack) as flower_metrics:
        server = prometheus(
            {"web": f"{stack.web_url}/metrics", "worker": stack.worker_metrics_url, "flower": flower_metrics}
        )
        server.wait_until_targets_up()
        drive_traffic(stack, server)
        yield server


def evaluate(server: PrometheusServer, query: PanelQuery) -> list[dict]:
    answer = server.query(to_promql(query.expr, RATE_INTERVAL, TIME_RANGE))
    assert answer["status"] == "success", f"{query.panel}/{query.ref_id}: {answer}"
    return answer["data"]["result"]  # type: ignore[no-any-return]


def panel_results(server: PrometheusServer, title: str) -> list[dict]:
    queries = [query for query in panel_queries() if query.panel == title]
    assert queries, f"no panel titled {title!r}"
    return [series for query in queries for series in evaluate(server, query)]


@pytest.mark.parametrize("query", panel_queries(), ids=lambda q: f"{q.panel}/{q.ref_id}")
def test_every_panel_query_evaluates(observed: PrometheusServer, query: PanelQuery) -> None:
    evaluate(observed, query)


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r.name)
def test_every_alert_expression_evaluates(observed: PrometheusServer, rule) -> None:  # noqa: ANN001
    answer = observed.query(rule.expr)
    assert answer["status"] == "success", f"{rule.name}: {answer}"


def test_prometheus_evaluates_every_alert_rule_without_error(observed: PrometheusServer) -> None:
    rules = {rule["name"]: rule for rule in observed.rules()}
    assert set(rules) == {rule.name for rule in alert_rules()}
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"


@pytest.mark.parametrize("query", panel_queries(), ids=lambda q: f"{q.panel}/{q.ref_id}")
def test_every_panel_query_shows_data_after_traffic(observed: PrometheusServer, query: PanelQuery) -> None:
    series = evaluate(observed, query)
    assert series, f"{query.panel}/{query.ref_id} is empty after traffic: {query.expr}"
    # A ratio or quantile of no traffic is NaN (a per-namespace ratio is NaN for a namespace
    # that saw none): the traffic must have defined at least one value of every query, and
    # moved what the panel exists to show.
    values = [v for v in (float(s["value"][1]) for s in series) if math.isfinite(v)]
    assert values, f"{query.panel}/{query.ref_id} has no defined value after traffic: {series}"
    if f"{query.panel}/{query.ref_id}" not in ZERO_AT_REST:
        assert any(v > 0 for v in values), f"{query.panel}/{query.ref_id} shows only zeros: {series}"


def test_the_breaker_panel_shows_it_opening_probing_and_closing(observed: PrometheusServer) -> None:
    moved = {s["metric"]["to"] for s in panel_results(observed, "Breaker transitions") if float(s["value"][1]) > 0}
    assert moved == {"open", "half-open", "closed"}, moved


def test_requests_by_outcome_shows_misses_hits_and_stale_answers(observed: PrometheusServer) -> None:
    rates = {
        series["metric"]["outcome"]: float(series["value"][1])
        for series in panel_results(observed, "Requests by outcome")
    }
    assert {"miss", "hit", "stale"} <= set(rates), rates
    assert rates["hit"] > 0, rates


def test_origin_calls_are_counted_next_to_requests(observed: PrometheusServer) -> None:
    series = panel_results(observed, "Origin calls vs requests")
    calls = [s for s in series if s["metric"].get("outcome") == "ok"]
    assert calls and float(calls[0]["value"][1]) > 0, series


def test_revalidations_show_as_a_share_of_origin_answers(observed: PrometheusServer) -> None:
    shares = {
        s["metric"]["namespace"]: float(s["value"][1])
        for s in panel_results(observed, "Revalidated share of origin answers")
    }
    assert 0 < shares.get("demo", 0) < 1, shares
    received = {
        s["metric"]["namespace"]: float(s["value"][1]) for s in panel_results(observed, "Origin bytes received")
    }
    assert received.get("demo", 0) > 0, received


def test_refresh_lag_quantiles_are_finite(observed: PrometheusServer) -> None:
    values = [float(s["value"][1]) for s in panel_results(observed, "Refresh lag p50/p99")]
    assert any(math.isfinite(v) and v > 0 for v in values), values


def test_breaker_state_shows_every_origin_closed(observed: PrometheusServer) -> None:
    states = {s["metric"]["origin"]: float(s["value"][1]) for s in panel_results(observed, "Breaker state per origin")}
    assert states and set(states.values()) == {0.0}, states


def test_fresh_share_counts_the_hits_of_the_hot_key(observed: PrometheusServer) -> None:
    [share] = [float(s["value"][1]) for s in panel_results(observed, "Fresh share")]
    assert 0 < share <= 1, share


def test_served_age_p99_is_finite(observed: PrometheusServer) -> None:
    [age] = [float(s["value"][1]) for s in panel_results(observed, "Served age p99")]
    assert math.isfinite(age) and age >= 0, age


def test_near_cache_answers_the_hot_key_and_is_never_bypassed(observed: PrometheusServer) -> None:
    [share] = [float(s["value"][1]) for s in panel_results(observed, "Near-cache hit share")]
    assert 0 < share <= 1, share
    rates = {
        s["metric"]["result"]: float(s["value"][1])
        for s in panel_results(observed, "Near-cache invalidations and bypasses")
    }
    assert set(rates) == {"invalidated", "bypassed"}, rates
    assert rates["bypassed"] == 0, "the subscription was up the whole time"
    assert len(panel_results(observed, "Near-cache bytes")) == 1, "one web instance holds a near-cache"
    # Refreshes of the 1 s TTL keys invalidate what was held, so the panel may read 0 by now:
    # look at its peak over the traffic instead.
    peak = observed.query('max_over_time(herdless_near_cache_bytes{job="web"}[1m])')["data"]["result"]
    assert peak and float(peak[0]["value"][1]) > 0, peak


def test_slot_waits_are_short_and_no_slot_is_held_at_rest(observed: PrometheusServer) -> None:
    quantiles = [float(s["value"][1]) for s in panel_results(observed, "Origin slot wait p50/p99")]
    assert len(quantiles) == 2 and all(math.isfinite(q) and 0 <= q < 1 for q in quantiles), quantiles
    series = panel_results(observed, "Origin slot waits and timeouts")
    waits = [float(s["value"][1]) for s in series if "origin" in s["metric"]]
    timeouts = [float(s["value"][1]) for s in series if "namespace" in s["metric"]]
    assert waits and waits[0] > 0, series
    assert timeouts and set(timeouts) == {0.0}, series
    in_flight = [float(s["value"][1]) for s in panel_results(observed, "Origin calls in flight")]
    assert in_flight == [0.0], in_flight


def test_workers_online_counts_the_worker_in_flower_and_in_prometheus(observed: PrometheusServer) -> None:
    series = panel_results(observed, "Workers online")
    assert [float(s["value"][1]) for s in series] == [1.0, 1.0], series
