"""What /metrics serves in both tiers: every process's counters (multiprocess mode) plus queue
depth, breaker state and origin calls in flight, read from the broker and Redis at scrape time.

/metrics names an origin as the status page does, by the namespaces that use it ("origin of
demo, demo-swr"), never by its host and port (or module and function): both pages are public,
and an origin's address is for the admin's GET /v1/namespaces."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from shared import rates
from shared.breaker import OriginBreaker
from shared.keys import Keyspace
from shared.metrics import ScrapeTimeCollector
from shared.namespaces import Namespace
from shared.origin_slots import OriginSlots
from shared.protocol import BreakerState
from shared.settings import Settings
from shared.store import make_redis


def queue_depths(celery_app: Any, queue: str) -> Iterable[tuple[str, int]]:
    """Messages waiting in the refresh queue (priority sub-queues summed by the transport)."""
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        # Passive on AMQP (a declare must not race the workers' own). Not on Redis: there a
        # declare creates nothing (a list exists while it holds messages), and kombu's passive
        # check (EXISTS) ignores the broker's global_keyprefix, so it never finds the queue.
        passive = conn.transport.driver_type != "redis"
        try:
            ok = conn.default_channel.queue_declare(queue=queue, passive=passive)
        except conn.channel_errors:
            # kombu's Redis transport reports an empty queue (no list key yet) as missing.
            return [(queue, 0)]
        return [(queue, int(ok.message_count))]


def breaker_states(breakers: list[OriginBreaker]) -> Iterable[tuple[str, BreakerState]]:
    """Each origin's breaker as a caller would find it now. An open breaker whose reset timeout
    is over is half-open: the next call is its probe. The stored word only changes at that call,
    so an origin nobody calls while its breaker is open would otherwise show open for ever (the
    load test's preflight, told to wait the reset timeout and retry, refused again and again)."""
    states = []
    for breaker in breakers:
        snap = breaker.snapshot()
        state = snap.state
        if state is BreakerState.OPEN and snap.remaining_open_ms <= 0:
            state = BreakerState.HALF_OPEN
        states.append((breaker.origin_name, state))
    return states


def origin_in_flight(slots: list[OriginSlots]) -> Iterable[tuple[str, int]]:
    return [(s.origin_name, s.in_flight()) for s in slots]


def origin_labels(namespaces: Iterable[Namespace]) -> dict[str, str]:
    """A public name for each origin: the namespaces that use it, not its host and port."""
    users: dict[str, list[str]] = defaultdict(list)
    for ns in namespaces:
        users[ns.origin_name].append(ns.name)
    return {origin: "origin of " + ", ".join(sorted(names)) for origin, names in users.items()}


class PublicOriginLabels(Collector):
    """Another registry's samples with each `origin` label replaced by its public name
    (`origin_labels`); a sample of an origin no namespace uses is left out, never shown by host."""

    def __init__(self, inner: CollectorRegistry, labels: dict[str, str]) -> None:
        self._inner = inner
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            samples = []
            for sample in family.samples:
                origin = sample.labels.get("origin")
                if origin is None:
                    samples.append(sample)
                elif origin in self._labels:
                    samples.append(sample._replace(labels={**sample.labels, "origin": self._labels[origin]}))
            family.samples = samples
            yield family


_global_scrape_collector: ScrapeTimeCollector | None = None


def build_registry(settings: Settings, celery_app: Any, namespaces: dict[str, Namespace]) -> CollectorRegistry:
    """Counters of every process of this role, plus queue depth and breaker state read per scrape,
    so queue depth stays visible from the web tier while no worker runs; origins by public name."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    client = make_redis(settings)
    keys = Keyspace.of(settings)
    origin_names = sorted({ns.origin_name for ns in namespaces.values()})
    slots = [OriginSlots(client, name, keys) for name in origin_names]
    breakers = [OriginBreaker(client, name, settings) for name in origin_names]
    collector = ScrapeTimeCollector(
        queue_depths=lambda: queue_depths(celery_app, keys.queue),
        breaker_states=lambda: breaker_states(breakers),
        origin_in_flight=lambda: origin_in_flight(slots),
    )
    if registry is REGISTRY:
        # One process, one global registry: a second app built in it (tests, a reload) replaces
        # the first one's scrape-time collector instead of failing on duplicate series.
        global _global_scrape_collector
        if _global_scrape_collector is not None:
            REGISTRY.unregister(_global_scrape_collector)
        _global_scrape_collector = collector
    registry.register(collector)
    public = CollectorRegistry()
    public.register(PublicOriginLabels(registry, origin_labels(namespaces.values())))
    return public


def configure_rate_recorder(settings: Settings) -> None:
    """Flush this process's last-minute counts (rates.RECORDER) to the Redis of `settings`. The
    web tier's app factory and the worker's Celery app factory call this."""
    rates.RECORDER.configure(lambda: make_redis(settings, pool_size=2), Keyspace.of(settings))
