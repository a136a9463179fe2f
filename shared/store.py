"""CacheStore: the Redis side of herdless — one-round-trip reads, leases, fenced writes, purges."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from shared import scripts
from shared.channels import PURGE_ACK_SECONDS, READY_CHANNEL, HandedOver, publish_invalidation, ready_message
from shared.clock import redis_now_ms
from shared.freshness import Lifetimes, fixed_lifetimes
from shared.keys import EntryKeys
from shared.namespaces import Namespace
from shared.origin import OriginResponse, Validators
from shared.protocol import (
    Decision,
    FailureCode,
    LeaseState,
    MarkerState,
    NoCode,
    ReadyStatus,
    WarmState,
    WriteMode,
    WriteOutcome,
    lease_state_of,
    marker_state_of,
)
from shared.settings import Settings
from shared.tasks import queued_marker_ttl_seconds
from shared.xfetch import draw_u

# Failure cooldown: 1 s, doubling per consecutive origin failure of the key, capped at the
# breaker's reset timeout (past that the breaker, not the key, holds the origin off).
COOLDOWN_BASE_MS = 1000
# Calls per pipeline of a batch (a warm-up): bounds the memory of one round trip.
PIPELINE_CHUNK = 1000


def _driver_info() -> dict[str, Any]:
    """redis-py builds its CLIENT SETINFO data per new connection, reading the installed
    package's metadata from disk each time (about a millisecond): a burst that grows a pool by
    hundreds of connections spent most of its time there. One object, built once, is shared."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before 7 has no driver_info (and reads no metadata per connection)
        return {}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


_DRIVER_INFO = _driver_info()


def make_redis(
    settings: Settings,
    *,
    url: str | None = None,
    pool_size: int | None = None,
    pool_wait_seconds: float | None = None,
    **kwargs: Any,
) -> Any:
    """A Redis client for the cache: a plain client, or a cluster client when REDIS_CLUSTER=true.

    pool_size caps the connections a process may open. With pool_wait_seconds, a caller that
    finds all of them busy waits up to that long for one (a blocking pool) instead of failing:
    a burst of a thousand requests in one gevent process then shares a few dozen connections,
    each command taking well under a millisecond, rather than opening a thousand at once, which
    made Redis's accept queue overflow and connects time out."""
    url = url or settings.redis_url
    opts: dict[str, Any] = {
        "socket_timeout": kwargs.pop("socket_timeout", 2.0),
        "socket_connect_timeout": kwargs.pop("socket_connect_timeout", 1.0),
        "health_check_interval": kwargs.pop("health_check_interval", 0),
    }
    # Fail fast: a request must answer within a second while Redis is down, not retry for ten.
    opts.setdefault("retry", Retry(NoBackoff(), 0))
    opts.update(_DRIVER_INFO)
    opts.update(kwargs)
    if pool_size:
        opts["max_connections"] = pool_size
    if settings.redis_cluster:
        opts.pop("health_check_interval", None)
        return RedisCluster.from_url(url, **opts)
    if pool_size and pool_wait_seconds is not None:
        pool = redis.BlockingConnectionPool.from_url(url, timeout=pool_wait_seconds, **opts)
        return redis.Redis(connection_pool=pool)
    return redis.Redis.from_url(url, **opts)


def new_token() -> str:
    """An unguessable lease token (96 random bits); one is drawn for every read."""
    return os.urandom(12).hex()


def make_etag(value: bytes) -> str:
    return '"' + hashlib.blake2b(value, digest_size=12).hexdigest() + '"'


# The READ script's reply, field by field (shared/scripts.py documents each).
READ_FIELDS = (
    "decision",
    "won",
    "now",
    "v",
    "ct",
    "etag",
    "at",
    "soft",
    "d",
    "neg",
    "lease_state",
    "lease_pttl",
    "u",
    "st",
    "cd",
)


def _int(raw: Any) -> int | None:
    return None if raw is None or raw is False else int(float(raw))


def _str(raw: Any) -> str:
    if raw is None or raw is False:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass(frozen=True)
class ReadResult:
    decision: Decision
    won_lease: bool
    now_ms: int
    value: bytes | None
    content_type: str
    etag: str
    at_ms: int | None
    soft_ms: int | None
    delta_ms: float
    negative: bool
    lease_state: str  # a LeaseState (from_reply gives the member)
    lease_pttl_ms: int
    u: float  # this value's XFetch draw (1.0 when none is stored)
    stale_ms: int | None = None  # the value's stale window, when stored with it
    # While cooling down: the code of the failure behind it (origin_error, breaker_open...)
    failure: FailureCode | NoCode = ""

    @property
    def has_value(self) -> bool:
        return self.soft_ms is not None

    @classmethod
    def from_reply(cls, raw: list[Any]) -> ReadResult:
        f = dict(zip(READ_FIELDS, raw, strict=True))
        lease_state = LeaseState(_str(f["lease_state"]))
        return cls(
            decision=Decision(_str(f["decision"])),
            won_lease=int(f["won"]) == 1,
            now_ms=int(f["now"]),
            value=f["v"] if f["v"] not in (None, False) else None,
            content_type=_str(f["ct"]) or "application/octet-stream",
            etag=_str(f["etag"]),
            at_ms=_int(f["at"]),
            soft_ms=_int(f["soft"]),
            delta_ms=float(_str(f["d"]) or 0),
            negative=_str(f["neg"]) == "1",
            lease_state=lease_state,
            lease_pttl_ms=int(f["lease_pttl"]),
            u=float(_str(f["u"]) or 1.0),
            stale_ms=_int(f["st"]),
            failure=FailureCode.parse(_str(f["cd"])) if lease_state is LeaseState.COOLDOWN else "",
        )


@dataclass(frozen=True)
class WriteResult:
    status: WriteOutcome
    delta_ms: float
    soft_ms: int
    written_at_ms: int

    @property
    def written(self) -> bool:
        """A value (new or revalidated) is stored and fresh."""
        return self.status.stored


@dataclass(frozen=True)
class StoredValidators:
    """What a conditional refresh needs of the stored entry: which entry it is (`at_ms`), its
    origin validators and the lifetimes it was stored with (a 304 without cache headers keeps
    them)."""

    at_ms: int
    validators: Validators
    lifetimes: Lifetimes

    _FIELDS: ClassVar[tuple[str, ...]] = ("at", "oetag", "olm", "neg", "ttl", "st", "sie")

    @classmethod
    def from_fields(cls, raw: list[Any], fallback: Lifetimes) -> StoredValidators | None:
        f = dict(zip(cls._FIELDS, raw, strict=True))
        at = _int(f["at"])
        validators = Validators(_str(f["oetag"]), _str(f["olm"]))
        if at is None or _str(f["neg"]) == "1" or not validators:
            return None
        ttl, st, sie = _int(f["ttl"]), _int(f["st"]), _int(f["sie"])
        lifetimes = Lifetimes(
            soft_ttl_ms=fallback.soft_ttl_ms if ttl is None else ttl,
            stale_ms=fallback.stale_ms if st is None else st,
            stale_if_error_ms=fallback.stale_if_error_ms if sie is None else sie,
        )
        return cls(at, validators, lifetimes)


# The INSPECT script's reply, field by field (shared/scripts.py documents each).
INSPECT_FIELDS = (
    "now",
    "exists",
    "soft",
    "at",
    "d",
    "u",
    "neg",
    "etag",
    "size",
    "fails",
    "sp",
    "entry_pttl",
    "lease",
    "lease_pttl",
    "queued",
    "queued_pttl",
)


@dataclass(frozen=True)
class EntryState:
    """What Redis holds for one key at one moment (Redis clock), read without changing it."""

    now_ms: int
    stored: bool  # the entry hash exists (a value, or a cached 404)
    soft_ms: int | None  # fresh until
    at_ms: int | None  # the origin call that produced or last revalidated the value started
    delta_ms: float  # smoothed refresh duration, XFetch's d
    u: float  # the value's XFetch draw
    negative: bool
    etag: str
    size_bytes: int
    failures: int  # consecutive failed refreshes (each doubles the cooldown)
    soft_purged_at_ms: int | None
    kept_until_ms: int | None  # when Redis drops the entry (stale window and stale-if-error included)
    lease: LeaseState  # FREE, HELD (a refresh holds it) or COOLDOWN (the last refresh failed)
    lease_until_ms: int | None
    cooldown_reason: FailureCode | NoCode  # while cooling down, why the last refresh failed
    queued: MarkerState
    queued_until_ms: int | None

    @property
    def anything_stored(self) -> bool:
        return self.stored or bool(self.lease) or bool(self.queued)

    @classmethod
    def from_reply(cls, raw: list[Any]) -> EntryState:
        f = dict(zip(INSPECT_FIELDS, raw, strict=True))
        now = int(f["now"])

        def until(pttl: Any) -> int | None:
            return now + int(pttl) if int(pttl) >= 0 else None

        lease, cooldown_reason = lease_state_of(_str(f["lease"]))
        queued = marker_state_of(_str(f["queued"]))
        return cls(
            now_ms=now,
            stored=int(f["exists"]) == 1,
            soft_ms=_int(f["soft"]),
            at_ms=_int(f["at"]),
            delta_ms=float(_str(f["d"]) or 0),
            u=float(_str(f["u"]) or 1.0),
            negative=_str(f["neg"]) == "1",
            etag=_str(f["etag"]),
            size_bytes=int(f["size"]),
            failures=_int(f["fails"]) or 0,
            soft_purged_at_ms=_int(f["sp"]),
            kept_until_ms=until(f["entry_pttl"]),
            lease=lease,
            lease_until_ms=until(f["lease_pttl"]) if lease else None,
            cooldown_reason=cooldown_reason,
            queued=queued,
            queued_until_ms=until(f["queued_pttl"]) if queued else None,
        )


class CacheStore:
    """All cache I/O for one Redis (or Cluster). Thread-safe; share one per process."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._read = client.register_script(scripts.READ)
        self._fenced_write = client.register_script(scripts.FENCED_WRITE)
        self._plain_write = client.register_script(scripts.PLAIN_WRITE)
        self._record_failure = client.register_script(scripts.RECORD_FAILURE)
        self._take_lease = client.register_script(scripts.TAKE_LEASE)
        self._claim = client.register_script(scripts.CLAIM)
        self._finish = client.register_script(scripts.FINISH)
        self._renew = client.register_script(scripts.RENEW_LEASE)
        self._end_run = client.register_script(scripts.END_RUN)
        self._mark_queued = client.register_script(scripts.MARK_QUEUED)
        self._purge = client.register_script(scripts.PURGE)
        self._soft_purge = client.register_script(scripts.SOFT_PURGE)
        self._warm = client.register_script(scripts.WARM)
        self._inspect = client.register_script(scripts.INSPECT)

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.settings.lease_ttl_seconds * 1000)

    @property
    def queued_marker_ttl_ms(self) -> int:
        return int(queued_marker_ttl_seconds(self.settings) * 1000)

    def read(self, ns: Namespace, key: str, token: str) -> ReadResult:
        """One EVALSHA: the entry, the decision and whether this caller won the refresh lease."""
        k = EntryKeys.of(ns.name, key)
        raw = self._read(
            keys=[k.entry, k.lease, k.queued],
            args=[
                repr(ns.beta),
                self.lease_ttl_ms,
                token,
                "1" if ns.serves_stale else "0",
                "0" if ns.strategy == "naive" else "1",
                self.queued_marker_ttl_ms,
            ],
        )
        return ReadResult.from_reply(raw)

    def inspect(self, ns: Namespace, key: str) -> EntryState:
        """One EVALSHA that reads the entry, its lease and its queued marker and changes none."""
        k = EntryKeys.of(ns.name, key)
        return EntryState.from_reply(self._inspect(keys=[k.entry, k.lease, k.queued]))

    def take_lease(self, ns: Namespace, key: str, token: str) -> bool:
        """Take the lease outside a read (a manual refresh); refused while a refresh is queued."""
        k = EntryKeys.of(ns.name, key)
        return (
            int(self._take_lease(keys=[k.lease, k.queued], args=[token, self.lease_ttl_ms, self.queued_marker_ttl_ms]))
            == 1
        )

    def claim(self, ns: Namespace, key: str, token: str) -> str | None:
        """A worker starts the refresh enqueued with `token`: make the lease this run's own and
        its queued marker a running one (cleared by `finish` once the message is acknowledged).
        Returns the run token (the lease value from now on), or None when the lease is someone
        else's."""
        k = EntryKeys.of(ns.name, key)
        run_token = f"{token}.{new_token()}"
        ok = (
            int(
                self._claim(
                    keys=[k.lease, k.queued], args=[token, run_token, self.lease_ttl_ms, self.queued_marker_ttl_ms]
                )
            )
            == 1
        )
        return run_token if ok else None

    def finish(self, ns: Namespace, key: str, token: str) -> None:
        """The message of the refresh enqueued with `token` is gone for good (never sent, expired
        in the queue, or acknowledged after its run): let the next read enqueue another."""
        k = EntryKeys.of(ns.name, key)
        self._finish(keys=[k.lease, k.queued], args=[token])

    def end_run(self, ns: Namespace, key: str, run_token: str) -> None:
        """A run stopped early: free its lease (its marker goes with its message, `finish`)."""
        k = EntryKeys.of(ns.name, key)
        self._end_run(keys=[k.lease], args=[run_token])

    def mark_queued(self, ns: Namespace, key: str, token: str) -> bool:
        """The message of the refresh enqueued with `token` goes back to the queue (its worker
        stops while it runs): its marker blocks other enqueues again, unless a read took over."""
        k = EntryKeys.of(ns.name, key)
        return int(self._mark_queued(keys=[k.queued], args=[token, self.queued_marker_ttl_ms])) == 1

    def warm(self, ns: Namespace, tokens: dict[str, str]) -> tuple[dict[str, WarmState], int]:
        """WARM each key (its token drawn by the caller), pipelined: ({key: state}, Redis ms).
        The states are those of the WARM script."""
        calls = []
        for key, token in tokens.items():
            k = EntryKeys.of(ns.name, key)
            calls.append(([k.entry, k.lease, k.queued], [token, self.lease_ttl_ms, self.queued_marker_ttl_ms]))
        replies = self._evalsha_many(self._warm, calls)
        states = {key: WarmState(_str(reply[0])) for key, reply in zip(tokens, replies, strict=True)}
        now = max((int(reply[1]) for reply in replies), default=0)
        return states, now

    def finish_many(self, ns: Namespace, tokens: dict[str, str]) -> None:
        """FINISH each key's token, pipelined: refreshes that will not be enqueued after all."""
        calls = []
        for key, token in tokens.items():
            k = EntryKeys.of(ns.name, key)
            calls.append(([k.lease, k.queued], [token]))
        self._evalsha_many(self._finish, calls)

    def _evalsha_many(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run one script over many keys in pipelines of PIPELINE_CHUNK calls, without a
        transaction (each call touches one hash tag, so this works on Redis Cluster too). The
        script is loaded first: a pipeline cannot load it on NOSCRIPT (a cluster pipeline
        does not even try)."""
        replies: list[Any] = []
        for start in range(0, len(calls), PIPELINE_CHUNK):
            chunk = calls[start : start + PIPELINE_CHUNK]
            for attempt in (1, 2):
                if attempt == 2 or start == 0:
                    script.sha = self.redis.script_load(script.script)
                pipe = self.redis.pipeline(transaction=False)
                for keys, args in chunk:
                    # execute_command, not pipe.evalsha: a cluster pipeline refuses the latter by
                    # name (it cannot load scripts on NOSCRIPT), but routes EVALSHA by its keys.
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                try:
                    replies += pipe.execute()
                    break
                except redis.exceptions.NoScriptError:
                    # Redis restarted (or flushed its scripts) between the load and the pipeline:
                    # no call of the chunk ran, load again and run it once more.
                    if attempt == 2:
                        raise
        return replies

    def lease_holder(self, ns: Namespace, key: str) -> str | None:
        raw = self.redis.get(EntryKeys.of(ns.name, key).lease)
        return None if raw is None else _str(raw)

    def renew_lease(self, ns: Namespace, key: str, token: str) -> bool:
        k = EntryKeys.of(ns.name, key)
        return int(self._renew(keys=[k.lease], args=[token, self.lease_ttl_ms])) == 1

    def now_ms(self) -> int:
        return redis_now_ms(self.redis)

    def stored_validators(self, ns: Namespace, key: str) -> StoredValidators | None:
        """The stored entry's origin validators, or None when there is nothing to revalidate
        (no entry, a cached 404, or an origin that gave no ETag nor Last-Modified)."""
        raw = self.redis.hmget(EntryKeys.of(ns.name, key).entry, *StoredValidators._FIELDS)
        return StoredValidators.from_fields(raw, fixed_lifetimes(ns))

    def fenced_write(
        self,
        ns: Namespace,
        key: str,
        token: str,
        *,
        started_ms: int,
        won_at_ms: int,
        value: bytes,
        content_type: str,
        negative: bool = False,
        u: float | None = None,
        validators: Validators | None = None,
        lifetimes: Lifetimes | None = None,
    ) -> WriteResult:
        """Store a value from the origin (see FENCED_WRITE); `lifetimes` default to the namespace's."""
        if negative:
            lifetimes = Lifetimes(int(ns.negative_ttl_seconds * 1000), 0, 0)
        return self._fenced(
            ns,
            key,
            token,
            WriteMode.STORE,
            started_ms=started_ms,
            won_at_ms=won_at_ms,
            body=value,
            content_type=content_type,
            etag=make_etag(value),
            validators=validators or Validators(),
            lifetimes=lifetimes or fixed_lifetimes(ns),
            negative=negative,
            u=u,
        )

    def revalidate(
        self,
        ns: Namespace,
        key: str,
        token: str,
        *,
        started_ms: int,
        won_at_ms: int,
        validated_at_ms: int,
        validators: Validators,
        lifetimes: Lifetimes,
        u: float | None = None,
    ) -> WriteResult:
        """The origin answered 304 to the validators of the entry stored at `validated_at_ms`:
        keep its bytes for a new lifetime, under the same fences as a write. Validators the 304
        left out stay as stored."""
        return self._fenced(
            ns,
            key,
            token,
            WriteMode.REVALIDATE,
            started_ms=started_ms,
            won_at_ms=won_at_ms,
            validators=validators,
            lifetimes=lifetimes,
            validated_at_ms=validated_at_ms,
            u=u,
        )

    def drop_uncacheable(
        self, ns: Namespace, key: str, token: str, *, started_ms: int, won_at_ms: int, hand_over: OriginResponse | None
    ) -> WriteResult:
        """The origin's answer may not be stored: delete the entry (under the same fences as a
        write) and hand `hand_over` to the readers waiting for the key, in the ready message."""
        handed = None if hand_over is None else HandedOver(hand_over.body, hand_over.content_type)
        return self._fenced(
            ns, key, token, WriteMode.DROP, started_ms=started_ms, won_at_ms=won_at_ms, hand_over=handed
        )

    def _fenced(
        self,
        ns: Namespace,
        key: str,
        token: str,
        mode: WriteMode,
        *,
        started_ms: int,
        won_at_ms: int,
        body: bytes = b"",
        content_type: str = "",
        etag: str = "",
        validators: Validators | None = None,
        lifetimes: Lifetimes | None = None,
        negative: bool = False,
        u: float | None = None,
        validated_at_ms: int = 0,
        hand_over: HandedOver | None = None,
    ) -> WriteResult:
        k = EntryKeys.of(ns.name, key)
        validators = validators or Validators()
        lifetimes = lifetimes or fixed_lifetimes(ns)
        args = scripts.FencedWriteArgs(
            run_token=token,
            started_ms=started_ms,
            won_at_ms=won_at_ms,
            mode=mode,
            value=body,
            content_type=content_type,
            etag=etag,
            origin_etag=validators.etag,
            origin_last_modified=validators.last_modified,
            soft_ttl_ms=lifetimes.soft_ttl_ms,
            stale_ms=lifetimes.stale_ms,
            stale_if_error_ms=lifetimes.stale_if_error_ms,
            negative=negative,
            u=draw_u() if u is None else u,
            validated_at_ms=validated_at_ms,
            channel=READY_CHANNEL,
            message=ready_message(ns.name, key, ReadyStatus.READY),
            hand_over="" if hand_over is None else ready_message(ns.name, key, ReadyStatus.READY, hand_over),
        )
        raw = self._fenced_write(keys=[k.entry, k.lease, k.tombstone, k.queued], args=args.argv())
        return WriteResult(
            status=WriteOutcome(_str(raw[0])),
            delta_ms=float(_str(raw[1]) or 0),
            soft_ms=int(raw[2]),
            written_at_ms=int(raw[3]),
        )

    def plain_write(
        self,
        ns: Namespace,
        key: str,
        *,
        started_ms: int,
        value: bytes,
        content_type: str,
        negative: bool,
        soft_ttl_ms: int | None = None,
    ) -> int:
        k = EntryKeys.of(ns.name, key)
        ttl = int(ns.negative_ttl_seconds * 1000) if negative else (soft_ttl_ms or ns.soft_ttl_ms)
        args = scripts.PlainWriteArgs(
            value=value,
            content_type=content_type,
            etag=make_etag(value),
            started_ms=started_ms,
            soft_ttl_ms=ttl,
            negative=negative,
        )
        return int(self._plain_write(keys=[k.entry], args=args.argv()))

    def record_failure(
        self,
        ns: Namespace,
        key: str,
        token: str,
        *,
        min_cooldown_ms: int = 0,
        origin_called: bool = True,
        reason: str = FailureCode.ORIGIN_ERROR,
    ) -> int:
        """Turn the lease into a cooldown, stretch the stale value's life and wake the key's
        cold-miss waiters ("error" on the ready channel), in one step; returns the cooldown ms.
        `reason` (a FailureCode) is kept with the cooldown: cold reads answer with it."""
        k = EntryKeys.of(ns.name, key)
        cap = max(COOLDOWN_BASE_MS, int(self.settings.breaker_reset_timeout_seconds * 1000))
        args = scripts.RecordFailureArgs(
            run_token=token,
            cooldown_base_ms=COOLDOWN_BASE_MS,
            cooldown_max_ms=max(cap, min_cooldown_ms),
            stale_ms=ns.stale_ttl_ms,
            stale_if_error_ms=int(ns.stale_if_error_seconds * 1000),
            min_cooldown_ms=min_cooldown_ms,
            origin_called=origin_called,
            reason=FailureCode(reason),
            channel=READY_CHANNEL,
            message=ready_message(ns.name, key, ReadyStatus.ERROR),
        )
        raw = self._record_failure(keys=[k.entry, k.lease, k.queued], args=args.argv())
        return int(raw[1])

    def purge(self, ns: Namespace, key: str) -> bool:
        k = EntryKeys.of(ns.name, key)
        # Writes need the lease, which the purge deletes, so correctness does not hang on this
        # timer; the tombstone only adds a start-time fence for the length of one lease.
        tomb_ms = int(self.settings.lease_ttl_seconds * 1000)
        return int(self._purge(keys=[k.entry, k.lease, k.tombstone], args=[tomb_ms])) == 1

    def soft_purge(self, ns: Namespace, key: str) -> bool:
        k = EntryKeys.of(ns.name, key)
        return int(self._soft_purge(keys=[k.entry, k.lease])) == 1

    def publish_invalidation(self, ns: Namespace, key: str) -> tuple[int, int]:
        """Tell every web process to drop this key from its near-cache (after a purge) and wait
        until they all did (PURGE_ACK_SECONDS at most). Returns (told, confirmed)."""
        return publish_invalidation(self.redis, ns.name, key, ack_timeout=PURGE_ACK_SECONDS)


# CLIENT LIST shows each web process's subscription under this name.
SUBSCRIBER_NAME = "herdless-web-subscriber"


def pubsub_client(settings: Settings) -> Any:
    """A dedicated client for the long-lived subscription (no read timeout on it)."""
    return make_redis(settings, socket_timeout=None, health_check_interval=30, client_name=SUBSCRIBER_NAME)
