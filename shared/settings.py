"""Process settings, read once from the environment and validated at start."""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Every Redis key, channel and queue of a deployment starts with its HERDLESS_PREFIX (shared/keys.py).
DEFAULT_PREFIX = "hl"
# No ":" (kombu splits its list names on it), no braces (Cluster hash tags), no glob characters.
PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

DEFAULT_NAMESPACES_FILE = Path(__file__).resolve().parent.parent / "namespaces.toml"

# inf and nan are refused: XFETCH_BETA=inf would refresh on every read, a nan TTL never expires.
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Port = Annotated[int, Field(ge=1, le=65535)]
# The shortest ADMIN_TOKEN accepted: a guessable token opens purges and refreshes to anyone.
MIN_ADMIN_TOKEN_CHARS = 32


def _check_redis_url(value: str, name: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{name} must start with redis://, rediss:// or unix://")
    return value


class Settings(BaseSettings):
    """Every knob of herdless; env var names are the field names upper-cased."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # The address web, the demo origin, worker metrics and Flower listen on: loopback unless
    # told otherwise (containers set 0.0.0.0 to be reachable through their published ports).
    bind_host: str = "127.0.0.1"
    redis_cluster: bool = False
    # Sentinel: "host:port,host:port" of the sentinels that watch the primary named
    # REDIS_SENTINEL_MASTER; REDIS_URL then gives only the password, database and TLS.
    redis_sentinels: str = ""
    redis_sentinel_master: str = ""
    celery_broker_url: str = ""
    # What this deployment's Redis names start with (shared/keys.py): another prefix, or another
    # database, keeps two deployments on one Redis server apart. Empty means the default.
    herdless_prefix: str = DEFAULT_PREFIX

    web_port: Port = 8000
    # gunicorn's full bind address (host:port or unix:PATH); empty means BIND_HOST:WEB_PORT.
    web_bind: str = ""
    web_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    web_threads: Annotated[int, Field(ge=1, le=1024)] = 4
    # gevent: each request is a greenlet, so thousands of cold-miss waiters cost no threads;
    # gthread: WEB_THREADS threads per worker process.
    web_worker_class: Literal["gevent", "gthread"] = "gevent"

    # gevent: one worker process runs WORKER_CONCURRENCY refreshes at once (a refresh is almost
    # all waiting on the origin); threads: as many OS threads; prefork: one refresh per process.
    worker_pool: Literal["gevent", "threads", "prefork"] = "gevent"
    worker_concurrency: Annotated[int, Field(ge=1, le=10000)] = 100
    # Celery workers `python -m workers` runs on this host (each WORKER_POOL x WORKER_CONCURRENCY),
    # their metrics summed on one WORKER_METRICS_PORT: how one gevent worker scales over cores.
    worker_processes: Annotated[int, Field(ge=1, le=256)] = 1
    # Calls in flight to one origin, across every worker process and host (a Redis semaphore).
    origin_max_concurrency: Annotated[int, Field(ge=1)] = 50
    worker_metrics_port: Port = 9540
    worker_metrics_url: str = ""  # where the status page reads worker figures

    origin_port: Port = 9000
    origin_latency_ms: NonNegativeSeconds = 100
    origin_failure_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0
    origin_base_url: str = ""

    namespaces_file: Path = DEFAULT_NAMESPACES_FILE

    cache_ttl_seconds: PositiveSeconds = 30
    stale_ttl_seconds: NonNegativeSeconds = 300
    stale_if_error_seconds: NonNegativeSeconds = 3600
    lease_ttl_seconds: PositiveSeconds = 10
    # How long a key's queued marker keeps other reads from enqueueing a refresh of it while its
    # message waits (unset: max(60 s, 6 leases)). The queue still holds one message per key
    # after it lapses: shared/queuebound.py remembers every waiting message until a worker takes it.
    queued_marker_seconds: PositiveSeconds | None = None
    # Refresh messages that may wait in the queue at once; past it a read that would enqueue a new
    # one is refused at once (a cold miss: 503 queue_full), so the broker cannot grow without bound
    # while workers are away or behind. 10 000 messages are ~10 MB of broker memory and, at the
    # default WORKER_CONCURRENCY (100 in flight) and a 100 ms origin, ~10 s of work.
    max_queued_refreshes: Annotated[int, Field(ge=1)] = 10_000
    # Keys one refresh message may carry: the cold misses a web process admits while another
    # admission is under way go out together (shared/admitbatch.py), each still its own refresh
    # on the worker. 1 (the default): a message per key. Off by default: the batcher runs one
    # admission round trip at a time per process, and 500 clients connecting with a burst of
    # 2 000 cold keys were served at 0.46-0.89 of the paced rate with 8, 0.85-0.92 with 1.
    refresh_batch_max: Annotated[int, Field(ge=1, le=64)] = 1
    # The head start in refresh durations (shared/xfetch.py); 2 meets the three workloads of
    # `python -m loadtest xfetchsweep` with one value (docs/xfetch.md).
    xfetch_beta: NonNegativeSeconds = 2.0
    cold_wait_timeout_seconds: PositiveSeconds = 5
    origin_timeout_seconds: PositiveSeconds = 10
    origin_max_bytes: Annotated[int, Field(ge=1)] = 1024 * 1024
    negative_ttl_seconds: PositiveSeconds = 10
    breaker_fail_max: Annotated[int, Field(ge=1)] = 5
    breaker_reset_timeout_seconds: PositiveSeconds = 30
    admin_token: str | None = None
    max_cold_waiters: Annotated[int, Field(ge=1)] = 1000
    # Reads one web process works on at once (near-cache hits and readers joining a wait already
    # under way excepted); past it a read is answered 503 `overloaded` at once. 0: no bound.
    max_requests_in_flight: Annotated[int, Field(ge=0)] = 512
    # Most keys one warm-up request (POST /v1/cache/<namespace>/warm) may name.
    warm_max_keys: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    # Most keys one batch read (POST /v1/cache/<namespace>/batch) may name.
    batch_max_keys: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # Near-cache: each web process serves a value Redis called fresh from memory until its
    # known XFetch moment, and drops it on the invalidation every write and purge publishes.
    near_cache: bool = True
    near_cache_max_bytes: Annotated[int, Field(ge=0)] = 64 * 1024 * 1024
    # ...and keeps at most this many values, whatever their size (distinct keys cost ~900 bytes
    # each beyond their value: shared/nearcache.py ENTRY_OVERHEAD_BYTES).
    near_cache_max_entries: Annotated[int, Field(ge=1)] = 100_000
    # Near-cache hits answered before Flask's routing (web/fasthit.py), with the same headers.
    web_fast_path: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return _check_redis_url(value, "REDIS_URL")

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            _sentinel_address(item)
        return ",".join(part.strip() for part in value.split(",") if part.strip())

    @field_validator("redis_sentinel_master")
    @classmethod
    def _sentinel_master(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", value):
            raise ValueError("REDIS_SENTINEL_MASTER must be 1-128 characters of A-Z, a-z, 0-9, '_', '.' or '-'")
        return value

    @field_validator("herdless_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value:
            return DEFAULT_PREFIX
        if not PREFIX_RE.fullmatch(value):
            raise ValueError("HERDLESS_PREFIX must be 1-64 characters of A-Z, a-z, 0-9, '_', '.' or '-'")
        return value

    @field_validator("bind_host")
    @classmethod
    def _bind_host(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            pass
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", value):
            raise ValueError("BIND_HOST must be an IP address (127.0.0.1, 0.0.0.0, ::1) or a host name")
        return value

    @field_validator("celery_broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "sentinel://", "amqp://", "amqps://", "pyamqp://")):
            raise ValueError("CELERY_BROKER_URL must be a redis://, rediss://, sentinel:// or amqp:// URL")
        return value

    @field_validator("origin_base_url")
    @classmethod
    def _origin_base(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("ORIGIN_BASE_URL must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("worker_metrics_url")
    @classmethod
    def _worker_metrics_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("WORKER_METRICS_URL must be an http:// or https:// URL")
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: str | None) -> str | None:
        if value and len(value) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters (it has {len(value)}): make one"
                " with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`, or leave it empty to"
                " turn the admin API off"
            )
        return value or None

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if self.redis_sentinels:
            if not self.redis_sentinel_master:
                raise ValueError("REDIS_SENTINEL_MASTER must name the primary when REDIS_SENTINELS is set")
            if self.redis_cluster:
                raise ValueError("REDIS_SENTINELS and REDIS_CLUSTER=true exclude each other")
            if self.redis_url.startswith("unix://"):
                raise ValueError("REDIS_SENTINELS needs a redis:// or rediss:// REDIS_URL (its password and db)")
        if not self.celery_broker_url:
            self.celery_broker_url = sentinel_broker_url(self) if self.redis_sentinels else self.redis_url
        if self.broker_is_sentinel and not self.redis_sentinel_master:
            raise ValueError("REDIS_SENTINEL_MASTER must name the primary of a sentinel:// CELERY_BROKER_URL")
        if not self.origin_base_url:
            self.origin_base_url = f"http://127.0.0.1:{self.origin_port}"
        if not self.web_bind:
            self.web_bind = f"{url_host(self.bind_host)}:{self.web_port}"
        if not self.worker_metrics_url:
            self.worker_metrics_url = f"http://127.0.0.1:{self.worker_metrics_port}/metrics"
        return self

    @property
    def broker_is_redis(self) -> bool:
        return self.celery_broker_url.startswith(("redis://", "rediss://", "sentinel://"))

    @property
    def broker_is_sentinel(self) -> bool:
        return self.celery_broker_url.startswith("sentinel://")

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [_sentinel_address(item) for item in self.redis_sentinels.split(",") if item]


def _sentinel_address(item: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"REDIS_SENTINELS must be host:port items separated by commas ({item!r} is not one)")
    return host.strip("[]"), int(port)


def sentinel_broker_url(settings: Settings) -> str:
    """kombu's sentinel transport URL for the sentinels of REDIS_SENTINELS, with REDIS_URL's
    user, password and database: `sentinel://:pw@h1:p1/0;sentinel://:pw@h2:p2/0`."""
    scheme_rest = settings.redis_url.partition("://")[2]
    authority, _, tail = scheme_rest.partition("/")
    userinfo = authority.rpartition("@")[0]
    auth = f"{userinfo}@" if userinfo else ""
    db = tail.partition("?")[0] or "0"
    return ";".join(f"sentinel://{auth}{url_host(h)}:{p}/{db}" for h, p in settings.sentinel_addresses)


def url_host(host: str) -> str:
    """A host as it goes into a URL or a gunicorn bind: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def reachable_host(bind_host: str) -> str:
    """Where a client on this machine reaches a server bound to bind_host (for printed URLs)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind_host, bind_host)


# A query parameter that carries a secret: redis-py reads `?password=` (what a unix socket URL
# needs, having no user:password@ to put it in).
_SECRET_PARAM = re.compile(r"([?&](?:password|passwd|pass|pwd|token)=)[^&#]*", re.IGNORECASE)


def redact_url(url: str, *, hide_user: bool = False) -> str:
    """Hide the secrets of a URL, for logs and error bodies: the password of its user:password@
    (redis://:secret@host/0 -> redis://:***@host/0; the whole user:password@ with `hide_user`)
    and any `?password=` query parameter. The authority ends at the first /, ? or # and its
    userinfo at the last @ before that, as urllib (and so redis-py) read it: a raw @ inside a
    password hides the whole password, never leaving its tail in sight. A raw / ? or # inside a
    password ends the authority early for urllib too: when an @ follows with a : before it,
    everything up to the last @ is hidden (a message may then hide more than the secret)."""
    url = _SECRET_PARAM.sub(r"\1***", url)  # first: an @ inside one is no end of a userinfo
    scheme, sep, rest = url.partition("://")
    if sep:
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        if "@" not in rest[:end] and ":" in rest[: max(0, rest.rfind("@"))]:
            end = len(rest)
        userinfo, at, host = rest[:end].rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            shown = "***" if hide_user else (f"{user}:***" if colon else user)
            rest = f"{shown}@{host}{rest[end:]}"
        url = f"{scheme}{sep}{rest}"
    return url


class SettingsError(SystemExit):
    """Raised when the environment holds an invalid setting; exits the process."""


def describe_validation_error(exc: ValidationError) -> str:
    lines = ["herdless: invalid settings:"]
    for err in exc.errors():
        name = str(err["loc"][0]).upper() if err["loc"] else "?"
        raw = os.environ.get(name, err.get("input"))
        if name == "ADMIN_TOKEN":
            shown: object = "<hidden>"
        elif isinstance(raw, str):
            shown = redact_url(raw)
        else:
            shown = raw
        lines.append(f"  {name}={shown!r}: {err['msg']}")
    return "\n".join(lines)


def load_settings() -> Settings:
    """Build the settings from the environment or exit naming the bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        print(describe_validation_error(exc), file=sys.stderr)
        raise SettingsError(2) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
