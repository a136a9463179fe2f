"""CacheStore: the Redis side of herdless — one-round-trip reads, leases, fenced writes, purges."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import redis

from shared import refresh_scripts, scripts
from shared.channels import PURGE_ACK_SECONDS, HandedOver, publish_invalidation, ready_message
from shared.clock import redis_now_ms
from shared.connection import SUBSCRIBER_NAME as SUBSCRIBER_NAME
from shared.connection import make_redis as make_redis
from shared.connection import pubsub_client as pubsub_client
from shared.freshness import Lifetimes, fixed_lifetimes
from shared.groups import GroupIndex
from shared.keys import Keyspace
from shared.maxmemory import RECORD_REFUSED_WRITE
from shared.namespaces import Namespace
from shared.origin import OriginResponse, Validators
from shared.pipeline import ScriptCall, evalsha_each, queue_evalsha, raise_first_error, run_pipelined
from shared.protocol import (
    FailureCode,
    ReadyStatus,
    Strategy,
    WarmState,
    WriteMode,
    WriteOutcome,
    cooldown_value,
)
from shared.replies import EntryState as EntryState
from shared.replies import ReadResult as ReadResult
from shared.replies import StoredValidators as StoredValidators
from shared.replies import WriteResult as WriteResult
from shared.replies import decode_text
from shared.settings import Settings
from shared.tags import join_tags, split_tags, value_tags
from shared.tasks import queued_marker_ttl_seconds
from shared.xfetch import draw_u

log = logging.getLogger("herdless.engine")

# Failure cooldown: 1 s, doubling per consecutive origin failure of the key, capped at the
# breaker's reset timeout (past that the breaker, not the key, holds the origin off).
COOLDOWN_BASE_MS = 1000
# Calls per pipeline of a batch (a warm-up): bounds the memory of one round trip.
PIPELINE_CHUNK = 1000


class Fence(NamedTuple):
    """What fences one run's write: the lease token the run holds, when its origin call
    started and when its key's lease was won (Redis clock, ms; see FENCED_WRITE). `then`: a
    call sent in the write's own round trip, after it (the run's origin slot release); its
    failure is logged, never the write's (the slot's lease runs out by itself)."""

    token: str
    started_ms: int
    won_at_ms: int
    then: ScriptCall | None = None


def new_token() -> str:
    """An unguessable lease token (96 random bits); one is drawn for every read."""
    return os.urandom(12).hex()


def make_etag(value: bytes) -> str:
    return '"' + hashlib.blake2b(value, digest_size=12).hexdigest() + '"'


class ClaimedRun(NamedTuple):
    """A claimed refresh run: its run token, and the stored entry's validators (None: nothing
    to revalidate) for a conditional origin call."""

    run_token: str
    stored: StoredValidators | None
    then: Any = None  # the reply of claim_run's `then` call, sent right after the claim


class CacheStore:
    """All cache I/O for one Redis (or Cluster). Thread-safe; share one per process."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.keys = Keyspace.of(settings)  # every Redis name this store uses
        self._read = client.register_script(scripts.READ)
        self._fenced_write = client.register_script(refresh_scripts.FENCED_WRITE)
        self._plain_write = client.register_script(scripts.PLAIN_WRITE)
        self._record_failure = client.register_script(refresh_scripts.RECORD_FAILURE)
        self._take_lease = client.register_script(scripts.TAKE_LEASE)
        self._claim = client.register_script(refresh_scripts.CLAIM)
        self._finish = client.register_script(refresh_scripts.FINISH)
        self._renew = client.register_script(refresh_scripts.RENEW_LEASE)
        self._end_run = client.register_script(refresh_scripts.END_RUN)
        self._mark_queued = client.register_script(scripts.MARK_QUEUED)
        self._purge = client.register_script(scripts.PURGE)
        self._soft_purge = client.register_script(scripts.SOFT_PURGE)
        self._warm = client.register_script(scripts.WARM)
        self._inspect = client.register_script(scripts.INSPECT)
        self._record_refused = client.register_script(RECORD_REFUSED_WRITE)
        self.groups = GroupIndex(client, self.keys)

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.settings.lease_ttl_seconds * 1000)

    @property
    def queued_marker_ttl_ms(self) -> int:
        return int(queued_marker_ttl_seconds(self.settings) * 1000)

    def read(self, ns: Namespace, key: str, token: str) -> ReadResult:
        """One EVALSHA: the entry, the decision and whether this caller won the refresh lease."""
        k = self.keys.entry(ns.name, key)
        return ReadResult.from_reply(self._read(keys=[k.entry, k.lease, k.queued], args=self._read_args(ns, token)))

    def _read_args(self, ns: Namespace, token: str) -> list[Any]:
        return [
            repr(ns.beta),
            self.lease_ttl_ms,
            token,
            "1" if ns.serves_stale else "0",
            "0" if ns.strategy is Strategy.NAIVE else "1",
            self.queued_marker_ttl_ms,
        ]

    def read_many(self, ns: Namespace, tokens: dict[str, str]) -> dict[str, ReadResult]:
        """READ each key (its token drawn by the caller), as `read` does, in one pipelined round
        trip per Redis node (a batch read)."""
        calls = []
        for key, token in tokens.items():
            k = self.keys.entry(ns.name, key)
            calls.append(([k.entry, k.lease, k.queued], self._read_args(ns, token)))
        replies = evalsha_each(self.redis, self._read, calls)
        return {key: ReadResult.from_reply(raw) for key, raw in zip(tokens, replies, strict=True)}

    def inspect(self, ns: Namespace, key: str) -> EntryState:
        """One EVALSHA that reads the entry, its lease and its queued marker and changes none."""
        k = self.keys.entry(ns.name, key)
        return EntryState.from_reply(self._inspect(keys=[k.entry, k.lease, k.queued]))

    def take_lease(self, ns: Namespace, key: str, token: str) -> bool:
        """Take the lease outside a read (a manual refresh); refused while a refresh is queued."""
        k = self.keys.entry(ns.name, key)
        return (
            int(self._take_lease(keys=[k.lease, k.queued], args=[token, self.lease_ttl_ms, self.queued_marker_ttl_ms]))
            == 1
        )

    def claim(self, ns: Namespace, key: str, token: str) -> str | None:
        """A worker starts the refresh enqueued with `token`: make the lease this run's own and
        its queued marker a running one (cleared by `finish` once the message is acknowledged).
        Returns the run token (the lease value from now on), or None when the lease is someone
        else's."""
        claimed, _ = self.claim_run(ns, key, token)
        return None if claimed is None else claimed.run_token

    def claim_run(
        self,
        ns: Namespace,
        key: str,
        token: str,
        *,
        before: ScriptCall | None = None,
        then: Callable[[str], ScriptCall] | None = None,
        undo_then: Callable[[str, Any], None] | None = None,
    ) -> tuple[ClaimedRun | None, Any]:
        """`claim`, also reading the stored entry's validators, in one round trip with the call
        `before` (sent ahead of the claim) and the call `then(run_token)` (sent after it: the
        run's origin slot): (the claimed run or None, `before`'s reply, which is its exception if
        it failed); `then`'s reply is the run's `then`. When the claim fails, `undo_then(run_token,
        then's reply)` undoes what `then` did. Raises the claim's own error (e.g. OutOfMemoryError)."""
        k = self.keys.entry(ns.name, key)
        run_token = f"{token}.{new_token()}"
        claim = ScriptCall(
            self._claim, [k.lease, k.queued, k.entry], [token, run_token, self.lease_ttl_ms, self.queued_marker_ttl_ms]
        )
        calls = [claim] if before is None else [before, claim]
        if then is not None:
            calls.append(then(run_token))
        replies = run_pipelined(self.redis, calls)
        then_reply = replies.pop() if then is not None else None
        reply, before_reply = replies[-1], (replies[0] if before is not None else None)
        claimed = not isinstance(reply, Exception) and int(reply[0]) == 1
        if not claimed and undo_then is not None:
            undo_then(run_token, then_reply)
        raise_first_error([reply])
        if not claimed:
            return None, before_reply
        stored = StoredValidators.from_fields(list(reply[1:]), fixed_lifetimes(ns))
        return ClaimedRun(run_token, stored, then_reply), before_reply

    def finish(self, ns: Namespace, key: str, token: str) -> None:
        """The message of the refresh enqueued with `token` is gone for good (never sent, expired
        in the queue, or acknowledged after its run): let the next read enqueue another."""
        k = self.keys.entry(ns.name, key)
        self._finish(keys=[k.lease, k.queued], args=[token])

    def finish_call(self, ns: Namespace, key: str, token: str) -> ScriptCall:
        """`finish` as a call to send with others (the keys of one acknowledged message)."""
        k = self.keys.entry(ns.name, key)
        return ScriptCall(self._finish, [k.lease, k.queued], [token])

    def end_run(self, ns: Namespace, key: str, run_token: str) -> None:
        """A run stopped early: free its lease (its marker goes with its message, `finish`)."""
        k = self.keys.entry(ns.name, key)
        self._end_run(keys=[k.lease], args=[run_token])

    def mark_queued(self, ns: Namespace, key: str, token: str) -> bool:
        """The message of the refresh enqueued with `token` goes back to the queue (its worker
        stops while it runs): its marker blocks other enqueues again, unless a read took over."""
        k = self.keys.entry(ns.name, key)
        return int(self._mark_queued(keys=[k.queued], args=[token, self.queued_marker_ttl_ms])) == 1

    def warm(self, ns: Namespace, tokens: dict[str, str]) -> tuple[dict[str, WarmState], int]:
        """WARM each key (its token drawn by the caller), pipelined: ({key: state}, Redis ms).
        The states are those of the WARM script."""
        calls = []
        for key, token in tokens.items():
            k = self.keys.entry(ns.name, key)
            calls.append(([k.entry, k.lease, k.queued], [token, self.lease_ttl_ms, self.queued_marker_ttl_ms]))
        replies = self._evalsha_many(self._warm, calls)
        states = {key: WarmState(decode_text(reply[0])) for key, reply in zip(tokens, replies, strict=True)}
        now = max((int(reply[1]) for reply in replies), default=0)
        return states, now

    def finish_many(self, ns: Namespace, tokens: dict[str, str]) -> None:
        """FINISH each key's token, pipelined: refreshes that will not be enqueued after all."""
        calls = []
        for key, token in tokens.items():
            k = self.keys.entry(ns.name, key)
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
                    queue_evalsha(pipe, self.redis, script.sha, keys, args)
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
        raw = self.redis.get(self.keys.entry(ns.name, key).lease)
        return None if raw is None else decode_text(raw)

    def renew_lease(self, ns: Namespace, key: str, token: str) -> bool:
        k = self.keys.entry(ns.name, key)
        return int(self._renew(keys=[k.lease], args=[token, self.lease_ttl_ms])) == 1

    def now_ms(self) -> int:
        return redis_now_ms(self.redis)

    def stored_validators(self, ns: Namespace, key: str) -> StoredValidators | None:
        """The stored entry's origin validators, or None when there is nothing to revalidate
        (no entry, a cached 404, or an origin that gave no ETag nor Last-Modified)."""
        raw = self.redis.hmget(self.keys.entry(ns.name, key).entry, *StoredValidators._FIELDS)
        return StoredValidators.from_fields(raw, fixed_lifetimes(ns))

    def fenced_write(
        self,
        ns: Namespace,
        key: str,
        fence: Fence,
        *,
        value: bytes,
        content_type: str,
        negative: bool = False,
        u: float | None = None,
        validators: Validators | None = None,
        lifetimes: Lifetimes | None = None,
        tags: Sequence[str] = (),
    ) -> WriteResult:
        """Store a value from the origin (see FENCED_WRITE); `lifetimes` default to the namespace's.
        It carries the namespace's tags and `tags` (the origin's)."""
        if negative:
            lifetimes = Lifetimes(int(ns.negative_ttl_seconds * 1000), 0, 0)
        return self._fenced(
            ns,
            key,
            fence,
            WriteMode.STORE,
            body=value,
            content_type=content_type,
            etag=make_etag(value),
            validators=validators or Validators(),
            lifetimes=lifetimes or fixed_lifetimes(ns),
            negative=negative,
            u=u,
            tags=value_tags(ns.tags, key, tags),
        )

    def revalidate(
        self,
        ns: Namespace,
        key: str,
        fence: Fence,
        *,
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
            fence,
            WriteMode.REVALIDATE,
            validators=validators,
            lifetimes=lifetimes,
            validated_at_ms=validated_at_ms,
            u=u,
        )

    def drop_uncacheable(
        self, ns: Namespace, key: str, fence: Fence, *, hand_over: OriginResponse | None
    ) -> WriteResult:
        """The origin's answer may not be stored: delete the entry (under the same fences as a
        write) and hand `hand_over` to the readers waiting for the key, in the ready message."""
        handed = None if hand_over is None else HandedOver(hand_over.body, hand_over.content_type)
        return self._fenced(ns, key, fence, WriteMode.DROP, hand_over=handed)

    def _fenced(
        self,
        ns: Namespace,
        key: str,
        fence: Fence,
        mode: WriteMode,
        *,
        body: bytes = b"",
        content_type: str = "",
        etag: str = "",
        validators: Validators | None = None,
        lifetimes: Lifetimes | None = None,
        negative: bool = False,
        u: float | None = None,
        validated_at_ms: int = 0,
        hand_over: HandedOver | None = None,
        tags: Sequence[str] = (),
    ) -> WriteResult:
        k = self.keys.entry(ns.name, key)
        validators = validators or Validators()
        lifetimes = lifetimes or fixed_lifetimes(ns)
        group_purge_ms = 0  # a drop stores nothing: no group holds it
        if mode is WriteMode.REVALIDATE:
            tags = value_tags(ns.tags, key, split_tags(decode_text(self.redis.hget(k.entry, "tg"))))
        if mode is not WriteMode.DROP:
            # Before the write, never after: see shared/groups.py for why either the walk of a
            # group purge finds the key or this finds its moment.
            life_ms = lifetimes.soft_ttl_ms + lifetimes.stale_ms + lifetimes.stale_if_error_ms
            group_purge_ms = self.groups.enlist(ns.name, key, tags, life_ms)
        args = refresh_scripts.FencedWriteArgs(
            run_token=fence.token,
            started_ms=fence.started_ms,
            won_at_ms=fence.won_at_ms,
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
            tags=join_tags(tags),
            group_purge_ms=group_purge_ms,
            channel=self.keys.ready_channel,
            message=ready_message(ns.name, key, ReadyStatus.READY),
            hand_over="" if hand_over is None else ready_message(ns.name, key, ReadyStatus.READY, hand_over),
        )
        write = ScriptCall(self._fenced_write, [k.entry, k.lease, k.tombstone, k.queued], args.argv())
        replies = run_pipelined(self.redis, [write] if fence.then is None else [write, fence.then])
        raise_first_error(replies[:1])
        if len(replies) > 1 and isinstance(replies[1], Exception):
            log.warning("the call after a write failed (%s)", type(replies[1]).__name__)
        raw = replies[0]
        return WriteResult(
            status=WriteOutcome(decode_text(raw[0])),
            delta_ms=float(decode_text(raw[1]) or 0),
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
        k = self.keys.entry(ns.name, key)
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
        k = self.keys.entry(ns.name, key)
        cap = max(COOLDOWN_BASE_MS, int(self.settings.breaker_reset_timeout_seconds * 1000))
        args = refresh_scripts.RecordFailureArgs(
            run_token=token,
            cooldown_base_ms=COOLDOWN_BASE_MS,
            cooldown_max_ms=max(cap, min_cooldown_ms),
            stale_ms=ns.stale_ttl_ms,
            stale_if_error_ms=int(ns.stale_if_error_seconds * 1000),
            min_cooldown_ms=min_cooldown_ms,
            origin_called=origin_called,
            reason=FailureCode(reason),
            channel=self.keys.ready_channel,
            message=ready_message(ns.name, key, ReadyStatus.ERROR),
        )
        raw = self._record_failure(keys=[k.entry, k.lease, k.queued], args=args.argv())
        return int(raw[1])

    def record_refused_write(self, ns: Namespace, key: str, token: str, run_token: str | None) -> None:
        """Redis at maxmemory refused this refresh's claim or write: the key cools down for one
        lease (code out_of_memory) and its cold waiters wake, in one step that runs at maxmemory."""
        cooldown = cooldown_value(run_token or token, FailureCode.OUT_OF_MEMORY)
        message = ready_message(ns.name, key, ReadyStatus.ERROR)
        args = [token, run_token or "", self.lease_ttl_ms, cooldown, self.keys.ready_channel, message]
        self._record_refused(keys=[self.keys.entry(ns.name, key).lease], args=args)

    def purge(self, ns: Namespace, key: str) -> bool:
        k = self.keys.entry(ns.name, key)
        # Writes need the lease, which the purge deletes, so correctness does not hang on this
        # timer; the tombstone only adds a start-time fence for the length of one lease.
        tomb_ms = int(self.settings.lease_ttl_seconds * 1000)
        return int(self._purge(keys=[k.entry, k.lease, k.tombstone], args=[tomb_ms])) == 1

    def soft_purge(self, ns: Namespace, key: str) -> bool:
        k = self.keys.entry(ns.name, key)
        return int(self._soft_purge(keys=[k.entry, k.lease])) == 1

    def publish_invalidation(self, ns: Namespace, key: str) -> tuple[int, int]:
        """Tell every web process to drop this key from its near-cache (after a purge) and wait
        until they all did (PURGE_ACK_SECONDS at most). Returns (told, confirmed)."""
        return publish_invalidation(self.redis, ns.name, key, ack_timeout=PURGE_ACK_SECONDS, keys=self.keys)
