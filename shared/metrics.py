"""Every herdless Prometheus metric, in one place. Labels are bounded: never a cache key.

Counters and histograms are updated by web and worker processes (prometheus_client
multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set). Queue depth, breaker state and origin
calls in flight are not stored anywhere in-process: ScrapeTimeCollector reads them from
Redis/the broker per scrape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import rates
from shared.protocol import BreakerState, Refusal

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
AGE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)


class WindowedCounter(Counter):
    """A (namespace, outcome) counter whose increments also feed the last-minute rates of the
    status page (shared/rates.py), counted where the event happens, in memory."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *, series: str, **kwargs: Any) -> None:
        super().__init__(name, documentation, labelnames, **kwargs)
        self._series = series
        self._kwargs["series"] = series  # what labels() passes to each child it builds

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        super().inc(amount, exemplar)
        namespace, outcome = self._labelvalues
        rates.RECORDER.add(self._series, namespace, outcome, amount)


REQUESTS = WindowedCounter(
    "herdless_requests",
    "Cache reads answered, by outcome",
    ["namespace", "outcome"],
    series="answers",
)
REQUEST_DURATION = Histogram(
    "herdless_request_duration_seconds",
    "Time to answer a cache read",
    ["namespace"],
    buckets=LATENCY_BUCKETS,
)
SERVED_AGE = Histogram(
    "herdless_served_age_seconds",
    "Age of the value served (now minus the start of the origin call that produced it)",
    ["namespace"],
    buckets=AGE_BUCKETS,
)
REFRESH_ENQUEUED = Counter(
    "herdless_refresh_enqueued",
    "Refresh tasks enqueued, by what triggered them",
    ["namespace", "reason"],
)
REFRESH_SUPPRESSED = Counter(
    "herdless_refresh_suppressed",
    "Refreshes not enqueued because one is already running, cooling down, or being waited on",
    ["namespace", "reason"],
)
REFRESHES = Counter(
    "herdless_refresh",
    "Refresh tasks finished, by outcome",
    ["namespace", "outcome"],
)
ORIGIN_CALLS = WindowedCounter(
    "herdless_origin_calls",
    "Calls made to an origin, by outcome",
    ["namespace", "outcome"],
    series="origin_calls",
)
ORIGIN_BYTES = Counter(
    "herdless_origin_bytes",
    "Bytes of value bodies received from origins (a 304 revalidation transfers none)",
    ["namespace"],
)
ORIGIN_DURATION = Histogram(
    "herdless_origin_duration_seconds",
    "Duration of origin calls",
    ["namespace"],
    buckets=LATENCY_BUCKETS,
)
ORIGIN_BATCH_KEYS = Histogram(
    "herdless_origin_batch_keys",
    "Keys asked for per call of a batch origin (its count: the batch origin's calls)",
    ["namespace"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
REFRESH_LAG = Histogram(
    "herdless_refresh_lag_seconds",
    "From winning the refresh lease to the value being written (queue wait included)",
    ["namespace"],
    buckets=LATENCY_BUCKETS,
)
BREAKER_TRANSITIONS = Counter(
    "herdless_breaker_transitions",
    "Circuit breaker state changes made by this process",
    ["origin", "to"],
)

ORIGIN_SLOT_WAIT = Histogram(
    "herdless_origin_slot_wait_seconds",
    "Time spent waiting for one of an origin's concurrency slots (timeouts included)",
    ["origin"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
NEAR_CACHE = Counter(
    "herdless_near_cache",
    "Near-cache (per-process L1) lookups and drops: hit, miss, invalidated, bypassed (subscription down)",
    ["result"],
)
COLD_WAKEUPS = Counter(
    "herdless_cold_wakeups",
    "Cold-miss waits woken by a refresh published on the subscription: one per key and web "
    "process, however many requests wait (waits that end otherwise re-read on a timer)",
    ["namespace"],
)
NEAR_CACHE_BYTES = Gauge(
    "herdless_near_cache_bytes",
    "Bytes held by the near-cache, summed over live processes",
    multiprocess_mode="livesum",
)

# A group purge's kinds, and the outcomes of PURGE_MEMBER (shared/group_scripts.py) in the order
# its answer lists them.
GROUP_PURGE_KINDS = ("tag", "namespace")
GROUP_PURGE_OUTCOMES = ("hard", "soft", "fenced", "kept")
GROUP_PURGE_KEYS = Counter(
    "herdless_group_purge_keys",
    "Keys visited by tag and namespace purges, by kind (tag, namespace) and outcome (hard, soft: a value "
    "purged; fenced: no value of the group stored, a refresh in flight stopped; kept: the value lacks the tag)",
    ["kind", "outcome"],
)
GROUP_PURGES = Counter(
    "herdless_group_purges",
    "Tag and namespace purges completed, by kind (tag, namespace) and mode (hard, soft)",
    ["kind", "mode"],
)
GROUP_PURGE_PENDING = Gauge(
    "herdless_group_purge_pending_keys",
    "Members of the tag and namespace purges running now that are not visited yet (their progress)",
    multiprocess_mode="livesum",
)
REDIS_DEGRADED = Gauge(
    "herdless_redis_degraded",
    "Web processes that find Redis unreachable and answer from memory (degraded mode), summed over live processes",
    multiprocess_mode="livesum",
)
DEGRADED_ANSWERS = Counter(
    "herdless_degraded_answers",
    "Reads answered while Redis was unreachable: stale (from the near-cache), refused (503) or "
    'origin (the namespace has fallback = "origin")',
    ["namespace", "answer"],
)
FRONT_HITS = Counter(
    "herdless_front_hits",
    "Near-cache hits the web tier's front door answered before Flask (web/fasthit.py for key-value "
    "reads, web/proxy_fasthit.py for proxied GETs and HEADs); also counted in herdless_requests_total",
    ["namespace"],
)
FRONT_READS = Counter(
    "herdless_front_reads",
    "Reads the front door admitted and made itself (neither a near-cache hit nor a joiner: a miss "
    "that waited, an early or stale value), answered before Flask (web/front.py); also counted in "
    "herdless_requests_total",
    ["namespace"],
)
FRONT_JOINED = Counter(
    "herdless_front_joined",
    "Readers of a key whose cold wait was under way in their process, joined and answered by the "
    "front door before Flask (web/front.py); also counted in herdless_requests_total",
    ["namespace"],
)
FRONT_REFUSED_REASONS = ("in_flight", "lag", "waiters")
FRONT_REFUSED = Counter(
    "herdless_front_refused",
    "Reads the web tier's front door (web/front.py) refused 503 overloaded before Flask, by reason: "
    "in_flight (the process's bound on reads in flight), lag (its event loop ran late past the bound) or "
    "waiters (a cold waiter more while the refresh tier is behind)",
    ["reason"],
)
REFUSED = Counter(
    "herdless_refused",
    "Requests answered 503 with no origin failure to blame, by reason: shed load (overloaded, "
    "too_many_waiters), a full refresh queue (queue_full), Redis at maxmemory (out_of_memory) or "
    "unreachable (redis_unavailable), the broker unreachable, or a cold wait that ran out",
    ["reason"],
)
PROXY_FORWARDED = Counter(
    "herdless_proxy_forwarded",
    "Proxied requests the web tier sent to the origin itself, never answered from the cache, by "
    "why: an unsafe or other method, a request that bypasses the cache (credentials, no-store), an "
    "unstored answer fetched for another reader (not_shared)",
    ["namespace", "reason"],
)
PROXY_NOT_STORED = Counter(
    "herdless_proxy_not_stored",
    "Proxied origin answers handed to their waiting readers and not stored, by RFC 9111 reason",
    ["namespace", "reason"],
)
PROXY_INVALIDATIONS = Counter(
    "herdless_proxy_invalidations",
    "Proxied URLs purged because an unsafe request to them (or naming them) succeeded",
    ["namespace"],
)

REQUEST_OUTCOMES = ("hit", "early", "stale", "miss", "negative", "not_modified", "timeout", "error")
ENQUEUE_REASONS = ("miss", "stale", "early", "manual", "warm")
SUPPRESS_REASONS = ("lease_held", "cooldown", "coalesced", "queue_full", "out_of_memory")
REFRESH_OUTCOMES = (
    "written",
    "revalidated",
    "uncacheable",
    "fenced",
    "lost_lease",
    "origin_error",
    "breaker_open",
    "expired",
    "slot_timeout",
    "out_of_memory",
)
ORIGIN_OUTCOMES = ("ok", "not_modified", "error", "timeout", "not_found")
BREAKER_STATES = tuple(BreakerState)
NEAR_CACHE_RESULTS = ("hit", "miss", "invalidated", "bypassed")
DEGRADED_ANSWER_KINDS = ("stale", "refused", "origin")


# Each metric with the values of its second label (empty: the first label alone), to create
# at 0 for every namespace (or origin) so that dashboards and rates see a series from the start.
Series = tuple[tuple[Any, tuple[str, ...]], ...]
WEB_SERIES: Series = (
    (REQUESTS, REQUEST_OUTCOMES),
    (REFRESH_ENQUEUED, ENQUEUE_REASONS),
    (REFRESH_SUPPRESSED, SUPPRESS_REASONS),
    (REQUEST_DURATION, ()),
    (SERVED_AGE, ()),
    (COLD_WAKEUPS, ()),
    (DEGRADED_ANSWERS, DEGRADED_ANSWER_KINDS),
    (FRONT_HITS, ()),
    (FRONT_JOINED, ()),
    (FRONT_READS, ()),
)
WORKER_SERIES: Series = (
    (REFRESHES, REFRESH_OUTCOMES),
    (ORIGIN_CALLS, ORIGIN_OUTCOMES),
    (ORIGIN_BYTES, ()),
    (ORIGIN_DURATION, ()),
    (REFRESH_LAG, ()),
    (ORIGIN_BATCH_KEYS, ()),
)
ORIGIN_SERIES: Series = ((BREAKER_TRANSITIONS, BREAKER_STATES), (ORIGIN_SLOT_WAIT, ()))


def _create(series: Series, names: Iterable[str]) -> None:
    for name in names:
        for metric, values in series:
            label_sets: list[tuple[str, ...]] = [(name, value) for value in values] or [(name,)]
            for labels in label_sets:
                metric.labels(*labels)


def init_web_series(namespaces: Iterable[str]) -> None:
    """Create every web label set at 0."""
    _create(WEB_SERIES, namespaces)
    for result in NEAR_CACHE_RESULTS:
        NEAR_CACHE.labels(result)
    for reason in Refusal:
        REFUSED.labels(reason)
    for front_reason in FRONT_REFUSED_REASONS:
        FRONT_REFUSED.labels(front_reason)
    for kind in GROUP_PURGE_KINDS:
        for outcome in GROUP_PURGE_OUTCOMES:
            GROUP_PURGE_KEYS.labels(kind, outcome)
        for mode in ("hard", "soft"):
            GROUP_PURGES.labels(kind, mode)
    REDIS_DEGRADED.set(0)


def init_worker_series(namespaces: Iterable[str], origins: Iterable[str]) -> None:
    """Create every worker label set at 0."""
    _create(WORKER_SERIES, namespaces)
    _create(ORIGIN_SERIES, origins)


class ScrapeTimeCollector(Collector):
    """Queue depth, breaker state and (when given) calls in flight per origin, read from their
    source of truth at each scrape."""

    def __init__(
        self,
        queue_depths: Callable[[], Iterable[tuple[str, int]]],
        breaker_states: Callable[[], Iterable[tuple[str, BreakerState]]],
        origin_in_flight: Callable[[], Iterable[tuple[str, int]]] | None = None,
    ) -> None:
        self._queue_depths = queue_depths
        self._breaker_states = breaker_states
        self._origin_in_flight = origin_in_flight

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("herdless_queue_depth", "Refresh tasks waiting in the broker queue", labels=["queue"])
        try:
            for queue, n in self._queue_depths():
                depth.add_metric([queue], n)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the broker blinked
            pass
        yield depth
        state = GaugeMetricFamily(
            "herdless_breaker_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)", labels=["origin"]
        )
        try:
            for origin, name in self._breaker_states():
                state.add_metric([origin], BreakerState(name).gauge)
        except Exception:  # noqa: BLE001
            pass
        yield state
        if self._origin_in_flight is None:
            return
        in_flight = GaugeMetricFamily(
            "herdless_origin_in_flight",
            "Origin calls holding a concurrency slot now, across every worker process and host",
            labels=["origin"],
        )
        try:
            for origin, n in self._origin_in_flight():
                in_flight.add_metric([origin], n)
        except Exception:  # noqa: BLE001
            pass
        yield in_flight


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile on cumulative (upper bound, count) buckets, sorted by bound:
    linear inside the bucket holding the rank, the lowest bucket starting at 0, and the highest
    finite bound when the rank falls in +Inf. None when nothing was observed."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return lower_bound
