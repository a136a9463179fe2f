"""Flask app factory: wires settings, namespaces, the cache store, the Celery client and routes."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from shared.namespaces import NamespaceConfigError, load_namespaces
from shared.settings import Settings, load_settings
from shared.store import CacheStore, make_redis, pubsub_client
from web.coldwait import ColdMissWaiter


def json_error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": error, "detail": detail})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class AnythingConverter(PathConverter):
    regex = "(?s:.+)"
    part_isolating = False  # may span "/" (Werkzeug would infer True: the regex holds no "/")


def json_response(status: int, body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        namespaces = load_namespaces(settings)
    except NamespaceConfigError as exc:
        raise SystemExit(f"herdless: {exc}") from None

    app = Flask(__name__)
    # Keys are opaque: "a//b" and "a/b/" are keys of their own, not paths to tidy up.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    # Werkzeug's `path` stops at a line break; ours takes every byte so that the route, not the
    # router, decides what a bad key is (a key with CR/LF gets 400 invalid_key, not 404).
    app.url_map.converters["anything"] = AnythingConverter
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from shared.metrics import init_web_series
    from workers.celery_app import make_celery
    from workers.metrics_server import build_registry

    celery = make_celery(settings)
    init_web_series(namespaces)
    ext: dict[str, Any] = {
        "settings": settings,
        "namespaces": namespaces,
        "store": CacheStore(
            # One connection per concurrent request at most: gevent allows MAX_COLD_WAITERS + 1000.
            make_redis(
                settings, pool_size=settings.max_cold_waiters + 1000, socket_timeout=1.0, socket_connect_timeout=0.5
            ),
            settings,
        ),
        "celery": celery,
        "waiter": ColdMissWaiter(lambda: pubsub_client(settings), settings.max_cold_waiters),
        "metrics_registry": build_registry(settings, celery, namespaces),
    }
    app.extensions["herdless"] = ext
    ext["waiter"].start()

    from web.routes import bp
    from web.status import bp as status_bp

    app.register_blueprint(bp)
    app.register_blueprint(status_bp)

    from web.openapi import bp as openapi_bp

    app.register_blueprint(openapi_bp)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        return json_error(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(RedisError)
    def _redis_error(exc: RedisError) -> Response:
        app.logger.warning("redis unavailable: %s", type(exc).__name__)
        return json_error(503, "redis_unavailable", "the cache store is unreachable", {"Retry-After": "1"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        app.logger.exception("unexpected error")
        return json_error(500, "internal_error", "unexpected server error")

    return app
