"""The refresh task's contract: its name, queue, priorities, Celery settings and `send_refresh`.

The queue is the deployment's own (`Keyspace.queue`, shared/keys.py), and on a Redis broker every
key and channel kombu uses starts with the deployment's `broker_keyprefix`, so two deployments on
one broker never take each other's tasks (nor see each other's task events).

Both tiers read this module; neither imports the other. The web tier sends a task by name with
these options; the worker registers the task under this name. No Celery import here: the
configuration is a plain dict that each tier hands to its own Celery app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.keys import Keyspace
from shared.namespaces import Namespace
from shared.settings import Settings

REFRESH_TASK = "herdless.refresh"
# Several keys of one batch-origin namespace in one message (a warm-up's, a batch read's): each
# key is still its own refresh (claim, lease, fenced write), only the message is shared.
REFRESH_MANY_TASK = "herdless.refresh_many"

# Priorities: a cold miss has someone waiting, a stale read has served old data, an early
# refresh is only a head start. A warm-up is a batch of manual refreshes: below the misses, so
# readers of keys it has not reached yet are not stuck behind thousands of its tasks.
# Redis lists lower numbers first; AMQP serves higher first.
_PRIORITY_REDIS = {"miss": 0, "manual": 3, "warm": 3, "stale": 3, "early": 6}
_PRIORITY_AMQP = {"miss": 9, "manual": 6, "warm": 6, "stale": 6, "early": 3}

# The Redis broker's priority lists: kombu keeps one list per step, "<queue><sep><step>" (the
# step 0 list is the queue's own name).
PRIORITY_STEPS = (0, 3, 6, 9)
BROKER_SEP = ":"

# Longest a refresh may wait for an origin slot (ORIGIN_MAX_CONCURRENCY) before giving up.
SLOT_WAIT_FACTOR = 3


def refresh_priority(reason: str, settings: Settings) -> int:
    table = _PRIORITY_REDIS if settings.broker_is_redis else _PRIORITY_AMQP
    return table[reason]


@dataclass(frozen=True)
class RefreshRequest:
    """One refresh task: the key, the token of the lease its sender won, why, and when (Redis ms)."""

    namespace: str
    key: str
    token: str
    reason: str
    won_at_ms: int

    def as_kwargs(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies, a cost on every enqueue.
        return {
            "namespace": self.namespace,
            "key": self.key,
            "token": self.token,
            "reason": str(self.reason),
            "won_at_ms": self.won_at_ms,
        }

    def shown(self) -> tuple[str, str]:
        """(argsrepr, kwargsrepr): what Flower's task list shows in its args and kwargs columns,
        and Celery's "received" log line: the namespace and key (`demo/'hello'`, as the refresh
        log writes them) and why, not the lease token. The task's name stays `herdless.refresh`:
        a key in it would make Flower's task types and its metrics' labels unbounded. Whatever
        publishes a refresh (send_task or a message built by hand) sets these two headers."""
        return f"{self.namespace}/{self.key!r}", repr({"reason": str(self.reason), "won_at_ms": self.won_at_ms})


# A refresh's (broker list, message), for the queue's admission to push itself (QueueBound.admit)
# when the broker is the store's own Redis (shared/taskmessage.py builds it).
MessageFor = Callable[[RefreshRequest], tuple[str, str]]


def queued_marker_ttl_seconds(settings: Settings) -> float:
    """How long a queued refresh blocks new ones for its key. Long enough to cover workers being
    away for a while; finite so that a message lost by the broker (or a worker that died between
    its ack and FINISH) cannot block the key forever. QUEUED_MARKER_SECONDS overrides it."""
    if settings.queued_marker_seconds is not None:
        return settings.queued_marker_seconds
    return max(60.0, 6 * settings.lease_ttl_seconds)


def refresh_expiry_seconds(settings: Settings) -> float:
    """How long a refresh task may wait in the queue before it is discarded unrun: as long as its
    queued marker keeps other refreshes of the key out (CLAIM lets a task whose lease ran out run
    while the marker is its own), whatever its reason.

    A refresh that waited past its lease is still worth its one origin call: the key is still
    missing or stale, and the marker has kept every read from enqueueing another. Discarding it
    at the lease's end (as this once did) cost the worker a revocation per task (an event, an
    ack, a FINISH) under exactly the backlog that made it late, and the next read then
    enqueued the same refresh again."""
    return queued_marker_ttl_seconds(settings)


def longest_origin_timeout(namespaces: dict[str, Namespace]) -> float | None:
    """The longest origin timeout of any namespace (None: none defined), which bounds how long the
    broker must keep a running refresh's message invisible."""
    return max((ns.origin_timeout_seconds for ns in namespaces.values()), default=None)


def longest_refresh_seconds(settings: Settings, origin_timeout_seconds: float | None = None) -> float:
    """Upper bound of one refresh run: waiting for an origin slot, then the origin call (a total
    deadline), then the write. Every origin call is cut off at its deadline, so this is a bound."""
    timeout = origin_timeout_seconds or settings.origin_timeout_seconds
    return timeout * (1 + SLOT_WAIT_FACTOR) + settings.lease_ttl_seconds


def visibility_timeout_seconds(settings: Settings, longest_origin_timeout: float | None = None) -> int:
    # The broker must not redeliver a refresh that is still running: visibility outlives the
    # longest run by a margin. A redelivery that happens anyway cannot touch the first run's
    # lease (CLAIM hands each run its own lease value).
    return int(max(60, 2 * longest_refresh_seconds(settings, longest_origin_timeout)))


def celery_config(
    settings: Settings, longest_origin_timeout: float | None = None, *, broker_connections: int = 64
) -> dict[str, Any]:
    """The Celery settings both tiers use (JSON only: nothing is ever unpickled).

    broker_connections: the most Redis connections the broker transport may open in this
    process. kombu's default (10) is sized for one task at a time: a gevent worker acking 100
    refreshes at once, or a web process enqueueing hundreds of cold misses at once, ran out
    ("Too many connections": acks lost, enqueues refused with 503)."""
    keys = Keyspace.of(settings)
    queue = keys.queue
    return {
        "broker_url": settings.celery_broker_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": queue,
        # The one declaration of the refresh queue (as kombu Queue options), for both tiers.
        "task_queues": {queue: {"routing_key": queue, "queue_arguments": {"x-max-priority": 10}}},
        "task_default_priority": None,
        "broker_transport_options": {
            "priority_steps": list(PRIORITY_STEPS),
            "sep": BROKER_SEP,
            "queue_order_strategy": "priority",
            "visibility_timeout": visibility_timeout_seconds(settings, longest_origin_timeout),
            "socket_timeout": 2,
            "socket_connect_timeout": 1,
            "max_retries": 2,
            "max_connections": broker_connections,
            # Redis broker only (others ignore it): the queue's lists, bindings, unacked
            # messages and the event and control channels, all under the deployment's prefix.
            "global_keyprefix": keys.broker_keyprefix,
            # kombu's sentinel transport asks the sentinels for this primary (REDIS_SENTINEL_MASTER).
            **({"master_name": settings.redis_sentinel_master} if settings.broker_is_sentinel else {}),
        },
        "broker_connection_timeout": 2,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # A web request must never hang on a dead broker: fail the publish fast instead.
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        # No task-sent events: each cost the web tier a second publish per enqueue (+50 % CPU
        # per send_task, measured) for a state ("SENT") Flower shows for a few milliseconds.
        # And no task events until a monitor asks: three publishes per refresh (received, started,
        # succeeded) were a seventh of the worker's CPU, spent for nobody when no Flower runs.
        # Flower asks by itself (its enable_events, on by default, sends `enable_events` to every
        # worker at start and every few seconds), so it still sees every task;
        # `celery -A workers.celery_app control enable_events` turns them on for other monitors.
        "task_send_sent_event": False,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "broker_heartbeat": 10,
    }


def broker_lists(keys: Keyspace) -> list[str]:
    """The Redis keys of the refresh queue's lists on a Redis broker, one per priority step."""
    return [keys.broker_keyprefix + keys.queue + (f"{BROKER_SEP}{step}" if step else "") for step in PRIORITY_STEPS]


def send_refresh(
    app: Any, request: RefreshRequest, settings: Settings, producer: Any = None, shadow: str | None = None
) -> None:
    """Put one refresh task on the queue (app: a Celery app). Raises whatever kombu raises when
    the broker is unreachable. A batch passes one `producer` (app.producer_or_acquire()) for all
    its tasks rather than taking one from the pool per task. `shadow`: the name Flower shows
    (a proxied URL's path: its key is a hash)."""
    queue = Keyspace.of(settings).queue
    app.send_task(
        REFRESH_TASK,
        producer=producer,
        shadow=shadow,
        kwargs=request.as_kwargs(),
        argsrepr=request.shown()[0],
        kwargsrepr=request.shown()[1],
        queue=queue,
        routing_key=queue,
        priority=refresh_priority(request.reason, settings),
        expires=refresh_expiry_seconds(settings),
    )


def send_refreshes(app: Any, requests: list[RefreshRequest], settings: Settings, producer: Any = None) -> None:
    """Put the refreshes of several keys of one namespace, all of one reason, on the queue as
    one task (REFRESH_MANY_TASK). Raises whatever kombu raises when the broker is unreachable."""
    first = requests[0]
    queue = Keyspace.of(settings).queue
    app.send_task(
        REFRESH_MANY_TASK,
        producer=producer,
        kwargs={"namespace": first.namespace, "items": [[r.key, r.token, r.reason, r.won_at_ms] for r in requests]},
        queue=queue,
        routing_key=queue,
        priority=refresh_priority(first.reason, settings),
        expires=refresh_expiry_seconds(settings),
    )


def requests_of(name: str | None, kwargs: Any) -> list[RefreshRequest]:
    """The refreshes a refresh task's kwargs carry (either task), [] for anything malformed."""
    try:
        if name == REFRESH_TASK:
            return [
                RefreshRequest(
                    str(kwargs["namespace"]),
                    str(kwargs["key"]),
                    str(kwargs["token"]),
                    str(kwargs.get("reason", "")),
                    int(kwargs.get("won_at_ms", 0)),
                )
            ]
        if name == REFRESH_MANY_TASK:
            namespace = str(kwargs["namespace"])
            return [RefreshRequest(namespace, str(k), str(t), str(r), int(w)) for k, t, r, w in kwargs["items"]]
    except (KeyError, TypeError, ValueError):
        pass
    return []
