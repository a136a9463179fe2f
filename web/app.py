"""Flask app factory: settings, namespaces, the read path with its queue and cold-miss waiter, routes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import NamedTuple

from celery import Celery
from flask import Flask, Response
from redis.exceptions import OutOfMemoryError, RedisError
from werkzeug.exceptions import HTTPException

from shared.admission import Admission
from shared.admitbatch import ManyMessageFor
from shared.answers import OVERLOADED
from shared.coldwait import ColdWaitHub
from shared.connection import PoolExhausted
from shared.degraded import PROBE_SECONDS, RedisHealth
from shared.exposition import build_registry, configure_rate_recorder
from shared.keys import Keyspace
from shared.metrics import init_web_series
from shared.namespaces import load_namespaces
from shared.nearcache import NearCache, NoNearCache
from shared.protocol import Refusal
from shared.proxy_read import ProxyReadPath, recording_sender, task_label
from shared.proxy_store import PendingRequests, ProxyStore
from shared.settings import Settings, load_settings
from shared.store import CacheStore, ReadResult, make_redis, pubsub_client
from shared.taskmessage import RedisRefreshPublisher, direct_publish_possible
from shared.tasks import MessageFor, RefreshRequest, celery_config, longest_origin_timeout, send_refresh
from web.front import Front
from web.group_routes import bp as group_routes_bp
from web.http import AnythingConverter, json_error, refusal
from web.openapi import bp as openapi_bp
from web.proxy import install as install_proxy
from web.proxy_admin import bp as proxy_admin_bp
from web.routes import bp as routes_bp
from web.state import EXTENSION, WebState
from web.status import bp as status_bp

# Redis connections one web process keeps for cache reads (see create_app).
WEB_REDIS_CONNECTIONS = 64


def celery_client(settings: Settings, longest_origin_timeout: float | None) -> Celery:
    """A Celery app for sending refresh tasks (by name: the web tier never imports the worker)."""
    app = Celery("herdless")
    app.conf.update(
        # Every request a gevent web process holds may enqueue at the same moment.
        celery_config(settings, longest_origin_timeout, broker_connections=settings.max_cold_waiters + 1000)
    )
    return app


def warm_broker_connection(client: Celery) -> bool:
    """Do now, at start, what the first send_task would: resolve the (disabled) result backend
    (an entry-point scan), connect to the broker and declare the refresh queue. Under a herd the
    winning request's first send paid for all of it, each round trip of the connect waiting
    behind the process's other requests. A broker that is down is left to the first send to
    report (False)."""
    try:
        client.backend  # noqa: B018 - the property resolves and caches the backend
        with client.producer_or_acquire() as producer:
            producer.maybe_declare(client.amqp.queues[client.conf.task_default_queue], retry=False)
        return True
    except Exception:  # noqa: BLE001 - kombu and redis raise many types; all mean "not now"
        return False


class RefreshSenders(NamedTuple):
    """How this process puts refreshes on the queue (ReadPath's send_refresh, open_batch and
    message_for)."""

    send: Callable[[RefreshRequest], None]
    open_batch: Callable[[], AbstractContextManager[Callable[[RefreshRequest], None]]]
    message_for: MessageFor | None
    many_message_for: ManyMessageFor | None  # with message_for: concurrent admissions' one message


def refresh_senders(
    settings: Settings, celery: Celery, cache_client: object, label: Callable[[RefreshRequest], str | None]
) -> RefreshSenders:
    """On a Redis broker one LPUSH of the message this process builds itself
    (shared/taskmessage.py: a third of the web tier's CPU per cold key was Celery's send path),
    pushed by the queue's admission itself when the broker is the cache's own Redis; on any
    other broker Celery's send_task. `label`: the name Flower shows for a task (a proxied key's)."""
    if direct_publish_possible(settings):
        publisher = RedisRefreshPublisher(settings, cache_client, pool_size=WEB_REDIS_CONNECTIONS)

        def send(request: RefreshRequest) -> None:
            publisher.send(request, shadow=label(request))

        @contextmanager
        def direct_batch() -> Iterator[Callable[[RefreshRequest], None]]:
            yield send

        in_admission = publisher.client is cache_client and not settings.redis_cluster
        if not in_admission:
            return RefreshSenders(send, direct_batch, None, None)
        return RefreshSenders(send, direct_batch, publisher.messages.build, publisher.messages.build_many)

    def enqueue(request: RefreshRequest) -> None:
        send_refresh(celery, request, settings, shadow=label(request))

    @contextmanager
    def enqueue_batch() -> Iterator[Callable[[RefreshRequest], None]]:
        # One producer (one broker connection) for a whole warm-up instead of one per task.
        with celery.producer_or_acquire() as producer:
            yield lambda request: send_refresh(celery, request, settings, producer=producer, shadow=label(request))

    return RefreshSenders(enqueue, enqueue_batch, None, None)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A bad file, or a callable origin this process cannot import, stops it here in one line.
    namespaces = load_namespaces(settings)

    app = Flask(__name__)
    # Keys are opaque: "a//b" and "a/b/" are keys of their own, not paths to tidy up.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    # Werkzeug's `path` stops at a line break; ours takes every byte so that the route, not the
    # router, decides what a bad key is (a key with CR/LF gets 400 invalid_key, not 404).
    app.url_map.converters["anything"] = AnythingConverter
    app.json.sort_keys = False  # type: ignore[attr-defined]

    celery = celery_client(settings, longest_origin_timeout(namespaces))
    init_web_series(namespaces)
    # Answers (and the naive strategy's origin calls) reach the status page's last minute.
    configure_rate_recorder(settings)
    # Requests share a bounded, blocking pool: a command takes well under a millisecond, so a
    # few dozen connections serve thousands of concurrent requests, and a burst never opens a
    # connection per request (which overflowed Redis's accept queue: connect timeouts, 503).
    # A Redis that is down refuses connections at once; the read timeout only catches a hung
    # server, and is generous because under a burst a gevent process can take a while to get
    # back to a greenlet whose reply is already in its socket. A request that finds every
    # connection busy for a second is answered 503 overloaded (PoolExhausted): Redis is up, the
    # process has too much in flight; the bound on reads in flight keeps that rare.
    client = make_redis(
        settings,
        pool_size=WEB_REDIS_CONNECTIONS,
        pool_wait_seconds=min(1.0, settings.cold_wait_timeout_seconds),
        socket_timeout=settings.cold_wait_timeout_seconds,
        socket_connect_timeout=0.5,
    )
    # The near-cache serves nothing until the hub's subscription is up (it starts suspended).
    near_cache: NearCache[ReadResult] | None = (
        NearCache(
            settings.near_cache_max_bytes,
            max_entries=settings.near_cache_max_entries,
            readers=settings.web_concurrency,
        )
        if settings.near_cache and settings.near_cache_max_bytes
        else None
    )
    # While Redis is unreachable the read path answers from memory and this probe, on a
    # connection of its own (the pool's may all be busy or broken), notices its return; the
    # pool's connections, broken by the outage, are dropped then rather than failing one by one.
    probe_client = make_redis(settings, socket_timeout=PROBE_SECONDS * 2, socket_connect_timeout=PROBE_SECONDS * 2)
    pool = getattr(client, "connection_pool", None)
    health = RedisHealth(
        probe_client.ping,
        on_recovery=(lambda: pool.disconnect(inuse_connections=False)) if pool is not None else None,
    )
    waiter = ColdWaitHub(
        lambda: pubsub_client(settings),
        settings.max_cold_waiters,
        near_cache,
        ack_client=client,
        keys=Keyspace.of(settings),
        on_subscribed=health.reachable,
    )

    store = CacheStore(client, settings)
    # A proxied key's refresh replays the request of the read that won its lease (shared/proxy_read.py).
    pending = PendingRequests()
    proxies = ProxyStore(store)
    senders = refresh_senders(settings, celery, client, lambda request: task_label(request, pending))

    @contextmanager
    def enqueue_batch() -> Iterator[Callable[[RefreshRequest], None]]:
        with senders.open_batch() as send:
            yield recording_sender(send, namespaces, pending, lambda: proxies)

    read_path = ProxyReadPath(
        settings,
        store,
        pending=pending,
        send_refresh=recording_sender(senders.send, namespaces, pending, lambda: proxies),
        open_batch=enqueue_batch,
        waiter=waiter,
        near_cache=near_cache if near_cache is not None else NoNearCache(),
        health=health,
        admission=Admission(settings.max_requests_in_flight or None, settings.cold_wait_timeout_seconds / 2),
    )
    if senders.message_for is not None:  # the broker is the cache's Redis
        read_path.queue.send_with_admission(senders.message_for, senders.many_message_for, settings.refresh_batch_max)
    app.extensions[EXTENSION] = WebState(
        settings=settings,
        namespaces=namespaces,
        read_path=read_path,
        celery=celery,
        waiter=waiter,
        metrics_registry=build_registry(settings, celery, namespaces),
    )
    waiter.start()
    warm_broker_connection(celery)

    install_proxy(app, namespaces)  # before routing: a mount's requests never reach the routes
    app.register_blueprint(routes_bp)
    app.register_blueprint(group_routes_bp)
    app.register_blueprint(proxy_admin_bp)
    app.register_blueprint(status_bp)
    app.register_blueprint(openapi_bp)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        return json_error(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(RedisError)
    def _redis_error(exc: RedisError) -> Response:
        if isinstance(exc, PoolExhausted):  # Redis is up; this process has too much in flight
            return refusal(OVERLOADED)
        if isinstance(exc, OutOfMemoryError):  # a purge or warm-up refused at maxmemory (shared/maxmemory.py)
            return json_error(503, Refusal.OUT_OF_MEMORY, "Redis is at its maxmemory", {"Retry-After": "1"})
        app.logger.warning("redis unavailable: %s", type(exc).__name__)
        return json_error(503, Refusal.REDIS_UNAVAILABLE, "the cache store is unreachable", {"Retry-After": "1"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        app.logger.exception("unexpected error")
        return json_error(500, "internal_error", "unexpected server error")

    # Last, once every blueprint's rules are known: near-cache hits and admission before Flask.
    app.wsgi_app = Front(app, app.wsgi_app)  # type: ignore[method-assign]
    return app
