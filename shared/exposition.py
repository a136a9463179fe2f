"""What /metrics serves in both tiers: every process's counters (multiprocess mode) plus queue
depth, breaker state and origin calls in flight, read from the broker and Redis at scrape time."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from shared import rates
from shared.breaker import breaker_state_key
from shared.metrics import ScrapeTimeCollector
from shared.namespaces import Namespace
from shared.origin_slots import OriginSlots
from shared.protocol import BreakerState
from shared.settings import Settings
from shared.store import make_redis
from shared.tasks import QUEUE


def queue_depths(celery_app: Any) -> Iterable[tuple[str, int]]:
    """Messages waiting in the refresh queue (priority sub-queues summed by the transport)."""
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        try:
            ok = conn.default_channel.queue_declare(queue=QUEUE, passive=True)
        except conn.channel_errors:
            # kombu's Redis transport reports an empty queue (no list key yet) as missing.
            return [(QUEUE, 0)]
        return [(QUEUE, int(ok.message_count))]


def breaker_states(client: Any, origin_names: list[str]) -> Iterable[tuple[str, BreakerState]]:
    states = []
    for name in origin_names:
        raw = client.get(breaker_state_key(name))
        states.append((name, BreakerState(raw.decode()) if raw else BreakerState.CLOSED))
    return states


def origin_in_flight(slots: list[OriginSlots]) -> Iterable[tuple[str, int]]:
    return [(s.origin_name, s.in_flight()) for s in slots]


_global_scrape_collector: ScrapeTimeCollector | None = None


def build_registry(settings: Settings, celery_app: Any, namespaces: dict[str, Namespace]) -> CollectorRegistry:
    """Counters of every process of this role, plus queue depth and breaker state read per scrape,
    so queue depth stays visible from the web tier while no worker runs."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    client = make_redis(settings)
    origin_names = sorted({ns.origin_name for ns in namespaces.values()})
    slots = [OriginSlots(client, name) for name in origin_names]
    collector = ScrapeTimeCollector(
        queue_depths=lambda: queue_depths(celery_app),
        breaker_states=lambda: breaker_states(client, origin_names),
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
    return registry


def configure_rate_recorder(settings: Settings) -> None:
    """Flush this process's last-minute counts (rates.RECORDER) to the Redis of `settings`. The
    web tier's app factory and the worker's Celery app factory call this."""
    rates.RECORDER.configure(lambda: make_redis(settings, pool_size=2))
