"""The hitbench baseline: Flask plus one redis-py GET per request, the least a Redis-backed cache can do.

Served by gunicorn with the web tier's own config, so `hitbench` compares the
two apps under identical process and thread settings:

    REDIS_URL=... WEB_PORT=8123 gunicorn -c web/gunicorn.conf.py 'loadtest.baseline_app:create_app()'

It answers the web tier's URL shape, `GET /v1/cache/<namespace>/<key>`, from
the Redis key `loadtest:baseline:<namespace>:<key>` (hitbench stores the warm
value there first), so both apps see the same request bytes.
"""

from __future__ import annotations

import os

import redis
from flask import Flask, Response

BASELINE_KEY = "loadtest:baseline:{namespace}:{key}"


def baseline_key(namespace: str, key: str) -> str:
    return BASELINE_KEY.format(namespace=namespace, key=key)


def create_app(redis_url: str | None = None) -> Flask:
    app = Flask(__name__)
    # A benchmark fixture, not part of the service: it reads only REDIS_URL, like the stack does.
    client = redis.Redis.from_url(redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))

    @app.get("/v1/cache/<namespace>/<path:key>")
    def cached(namespace: str, key: str) -> Response:
        value = client.get(baseline_key(namespace, key))
        if value is None:
            return Response(b'{"error": "not_found", "detail": "no baseline value"}', 404, mimetype="application/json")
        return Response(value, 200, mimetype="application/json", headers={"X-Cache": "HIT"})

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(b'{"status": "ok"}', 200, mimetype="application/json")

    return app
