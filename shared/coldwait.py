"""ColdWaitHub: a process's one pub/sub connection, waking cold-miss waiters per key and invalidating the near-cache.

Two channels, one connection (their names and messages: shared/channels.py):

- the ready channel: a refresh of the key ended ("ready" or "error"). It wakes that key's
  waiters -- only them -- and, a write having happened, drops the key from the near-cache. An
  uncacheable answer it carries is handed to the waiters it wakes (``WaitHandle.handed_over``),
  and to no one else.
- the invalidation channel: published after every hard and soft purge; drops the key from the
  near-cache. It wakes no waiter. A purge waits (``PURGE_ACK_SECONDS`` at most) until every
  subscribed process has dropped the key and pushed its acknowledgement to the list the message
  names, so once a purge has answered no web process serves the purged value from memory. Each
  hub keeps its entry in the deployment's subscriber set (``Keyspace.subscribers``) alive while
  it is subscribed (purges count those), and removes it when it loses the subscription (its
  near-cache is suspended then anyway).

Waiting. Waiters of one key share one ``_KeyWait``: a generation number, the last published
status and an Event that is replaced by a fresh one at each publish, so a publish for key K
sets exactly one Event and touches nothing else (no process-wide notify_all). A waiter
registers (``join``) and records the generation (``mark``) *before* it re-reads the entry,
and the subscription is already live, so a publish between its read and its ``wait`` is
never lost: the generation has moved and ``wait`` returns at once.

Sharing the re-read. When a publish wakes N waiters of K, one of them re-reads Redis and the
others take its result (``WaitHandle.shared_read``). A waiter may take a read only if that read
started after the waiter joined or last consumed a read, and at a generation no older than the
one it marked -- so sharing never hides a publish it would have seen reading by itself.

Fallbacks. While the subscription is down, ``wait`` returns after ``DISCONNECTED_SLICE`` so
waiters re-read on a short period; while it is up, after ``CONNECTED_SLICE`` as a safety net.
While it is down the near-cache is suspended (flushed and bypassed) and it resumes only after
the subscribe handshake of both channels completes. A heartbeat PING every
``HEARTBEAT_SECONDS`` of silence, with nothing heard for ``LIVENESS_SECONDS``, counts as a lost
connection, so a silently dead TCP connection cannot leave the near-cache serving unheard-of
writes for longer than that.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from shared import metrics
from shared.channels import PURGE_ACK_SECONDS, HandedOver, parse_message
from shared.clock import redis_now_ms
from shared.keys import DEFAULT_KEYSPACE, Keyspace
from shared.nearcache import NearCache
from shared.protocol import ReadyStatus

log = logging.getLogger("herdless.coldwait")

CONNECTED_SLICE = 1.0  # safety-net re-read period while the subscription is live
DISCONNECTED_SLICE = 0.2  # re-read period while it is not
# How long a waiter that found the lease free waits for a publish that crossed its re-read
# (WaitHandle.landed_meanwhile) before it takes the refresh over.
LANDED_GRACE_SECONDS = 2.0
HANDSHAKE_SECONDS = 2.0  # both subscribe confirmations must arrive within this
HEARTBEAT_SECONDS = 1.0  # PING after this long without hearing anything
LIVENESS_SECONDS = 3.0  # nothing heard (not even a pong) for this long: reconnect
MAX_BACKOFF_SECONDS = 2.0
READY_MEMORY = 100_000  # keys whose last ready message time is remembered


T = TypeVar("T")


class TooManyWaiters(Exception):
    """MAX_COLD_WAITERS requests of this process are already waiting."""


class _SharedRead:
    __slots__ = ("seq", "generation", "done", "result", "error")

    def __init__(self, seq: int, generation: int) -> None:
        self.seq = seq
        self.generation = generation  # the key's generation when the read started
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _KeyWait:
    __slots__ = ("waiters", "generation", "status", "handed_over", "event", "read_seq", "read", "oldest_read")

    def __init__(self, oldest_read: float) -> None:
        # When the oldest read of its waiters started (time.monotonic()): each found no value.
        self.oldest_read = oldest_read
        self.waiters = 0
        self.generation = 0
        self.status = ReadyStatus.READY  # what the last publish said
        self.handed_over: HandedOver | None = None  # what the last publish handed over
        self.event = threading.Event()  # set (and replaced) by the next publish
        self.read_seq = 0
        self.read: _SharedRead | None = None


class WaitHandle:
    """One waiter's view of its key's shared wait."""

    def __init__(self, hub: ColdWaitHub, wait: _KeyWait, coalesced: bool) -> None:
        self._hub = hub
        self._wait = wait
        self.coalesced = coalesced  # another waiter of this key was already there
        self.waiting_since = wait.oldest_read  # the oldest read of this key's waiters started then
        self._seen = wait.generation
        self._read_floor = wait.read_seq  # only reads started after this one may be shared
        self.ran_last_read = False  # whether the last shared_read ran fn in this caller
        # The uncacheable answer handed over by the publish the last wait() returned, if any.
        self.handed_over: HandedOver | None = None

    def mark(self) -> None:
        """Remember the current generation: call just before re-reading the entry."""
        with self._hub._lock:
            self._seen = self._wait.generation

    def landed_meanwhile(self, timeout: float = LANDED_GRACE_SECONDS, *, until: float | None = None) -> bool:
        """Whether a refresh of this key was published since the last mark(), waiting for one up
        to `timeout`, and never past `until` (time.monotonic(): the reader's own cold-wait
        deadline); unlike wait() it leaves the publish for the next wait() to return.

        For a re-read that found no value and a free lease after waiting: the refresh may have
        ended without storing anything (an uncacheable answer handed over in its publish). The
        publish precedes the read in Redis, but a busy process's subscriber may take it in
        hundreds of ms later (measured: up to half a second on a loaded 2-core machine)."""
        deadline = time.monotonic() + timeout
        if until is not None:
            deadline = min(deadline, until)
        while True:
            with self._hub._lock:
                if self._wait.generation != self._seen:
                    return True
                event = self._wait.event
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            event.wait(left)

    def wait(self, timeout: float) -> ReadyStatus | None:
        """Block until a refresh of this key is published after the last mark(), or the timeout
        (capped at the current re-read slice). Returns the published status or None."""
        slice_ = self._hub.connected_slice if self._hub.connected.is_set() else self._hub.disconnected_slice
        deadline = time.monotonic() + min(timeout, slice_)
        while True:
            with self._hub._lock:
                if self._wait.generation != self._seen:
                    self._seen = self._wait.generation
                    self.handed_over = self._wait.handed_over
                    return self._wait.status
                event = self._wait.event
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            event.wait(left)

    def shared_read(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn`` (the re-read) once for all waiters of this key that need one now.

        The first caller runs it; callers of the same wake-up take its result or exception.
        Side effects belong in ``fn`` (every sharer receives the same result): e.g. enqueue
        the refresh inside ``fn`` when its read won the lease. ``ran_last_read`` tells whether
        this caller ran it. A sharer waiting longer than ``timeout`` gets TimeoutError."""
        wait = self._wait
        with self._hub._lock:
            current = wait.read
            if current is not None and current.seq > self._read_floor and current.generation >= self._seen:
                leader = False
            else:
                wait.read_seq += 1
                current = wait.read = _SharedRead(wait.read_seq, wait.generation)
                leader = True
        self._read_floor = current.seq
        self.ran_last_read = leader
        if leader:
            try:
                current.result = fn()
                return current.result
            except Exception as exc:
                current.error = exc
                raise
            except BaseException:
                current.error = RuntimeError("the shared read was interrupted")
                raise
            finally:
                current.done.set()
        if not current.done.wait(timeout):
            raise TimeoutError("the shared read did not finish in time")
        if current.error is not None:
            raise current.error
        result: T = current.result
        return result


class ColdWaitHub:
    """The process's one subscription: per-key cold-miss wake-ups and near-cache invalidation."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        max_waiters: int,
        nearcache: NearCache[Any] | None = None,
        *,
        ack_client: Any | None = None,
        keys: Keyspace = DEFAULT_KEYSPACE,  # the deployment's channels and subscriber set
        connected_slice: float = CONNECTED_SLICE,
        disconnected_slice: float = DISCONNECTED_SLICE,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        liveness_seconds: float = LIVENESS_SECONDS,
        on_subscribed: Callable[[], object] | None = None,
    ) -> None:
        self._client_factory = client_factory
        self._on_subscribed = on_subscribed  # Redis answered: e.g. end degraded mode at once
        self._max_waiters = max_waiters
        self.nearcache = nearcache
        self._ack_client = ack_client  # confirms purges' invalidations (None: never confirms)
        self.keys = keys
        self._member = os.urandom(8).hex()  # this hub in the subscriber set
        self.connected_slice = connected_slice
        self.disconnected_slice = disconnected_slice
        self.heartbeat_seconds = heartbeat_seconds
        self.liveness_seconds = max(liveness_seconds, heartbeat_seconds)
        self._lock = threading.Lock()
        self._waits: dict[tuple[str, str], _KeyWait] = {}
        # When each key's last ready message arrived (bounded; see ready_since).
        self._last_ready: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._ready_forgotten_at = float("-inf")
        self._active = 0
        self.connected = threading.Event()
        self.subscriptions = 0  # completed subscribe handshakes (reconnects included)
        self.wakeups = 0  # key waits signalled by a published ready message
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()
        self._stop = threading.Event()
        self._pubsub: Any = None

    # -- the subscription --------------------------------------------------------------

    def start(self) -> None:
        """Subscribe now rather than on the first cold miss (call in the serving process, after fork)."""
        if self._thread is not None:
            return
        with self._started:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="coldwait-hub", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening (tests, shutdown). The near-cache is left suspended."""
        self._stop.set()
        pubsub = self._pubsub
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail; we are leaving
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._unregister()

    def _listen(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._pubsub = self._client_factory().pubsub()
                self._subscribe(self._pubsub)
                backoff = 0.1
                self._pump(self._pubsub)
            except Exception as exc:  # noqa: BLE001 - reconnect whatever happened
                if not self._stop.is_set():
                    log.warning("coldwait subscription lost (%s: %s); reconnecting", type(exc).__name__, exc)
            finally:
                self._lost()
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _subscribe(self, pubsub: Any) -> None:
        channels = (self.keys.ready_channel, self.keys.invalidation_channel)
        pubsub.subscribe(*channels)
        pending = set(channels)
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("subscribe handshake did not complete")
            message = pubsub.get_message(timeout=left)
            if message is None:
                continue
            if message.get("type") == "subscribe":
                pending.discard(_text(message.get("channel")))
            else:
                self._handle(message)
        # Only now can no invalidation be missed: serve from memory again, and count in purges.
        self._register()
        self.subscriptions += 1
        self.connected.set()
        if self.nearcache is not None:
            self.nearcache.resume()
        if self._on_subscribed is not None:
            self._on_subscribed()

    def _pump(self, pubsub: Any) -> None:
        heard = pinged = registered = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=self.heartbeat_seconds / 2)
            now = time.monotonic()
            if now - registered >= self.heartbeat_seconds:
                self._register()
                registered = now
            if message is not None:
                heard = now
                self._handle(message)
                continue
            if now - heard > self.liveness_seconds:
                raise ConnectionError(f"nothing heard on the subscription for {self.liveness_seconds}s")
            if now - heard > self.heartbeat_seconds and now - pinged > self.heartbeat_seconds:
                pubsub.ping()
                pinged = now

    def _lost(self) -> None:
        # Suspend before anything else: from here on invalidations may be missed.
        if self.nearcache is not None:
            self.nearcache.suspend()
        self.connected.clear()
        self._unregister()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass

    def _handle(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        event = parse_message(_text(message.get("channel")), message["data"], self.keys)
        if event is None:
            return
        if self.nearcache is not None:
            if event.whole_namespace:
                self.nearcache.invalidate_namespace(event.ns)
            else:
                for key in event.keys or (event.key,):
                    self.nearcache.invalidate(event.ns, key)
        if event.ack is not None:
            self._confirm(event.ack)
        if event.channel == self.keys.ready_channel:
            self._wake((event.ns, event.key), event.status, event.handed_over)

    def _register(self) -> None:
        # Purges wait for the confirmation of every registered hub; an entry outlives a missed
        # renewal by the liveness bound, after which the hub counts as lost anyway.
        if self._ack_client is None:
            return
        ttl_ms = int((self.heartbeat_seconds + self.liveness_seconds) * 1000)
        try:
            # Plain commands, not a script: this runs every heartbeat in every web process, and
            # scripts are what tests count to prove a request never reached Redis.
            now = redis_now_ms(self._ack_client)
            with self._ack_client.pipeline(transaction=False) as pipe:
                subscribers = self.keys.subscribers
                pipe.zremrangebyscore(subscribers, "-inf", now)
                pipe.zadd(subscribers, {self._member: now + ttl_ms})
                pipe.pexpire(subscribers, ttl_ms * 2)
                pipe.execute()
        except Exception as exc:  # noqa: BLE001 - purges then wait their bound for us; no harm
            log.warning("could not register the subscription for purges (%s)", type(exc).__name__)

    def _unregister(self) -> None:
        if self._ack_client is None:
            return
        try:
            self._ack_client.zrem(self.keys.subscribers, self._member)
        except Exception:  # noqa: BLE001 - the entry expires on its own
            pass

    def _confirm(self, ack: str) -> None:
        if self._ack_client is None:
            return
        try:
            with self._ack_client.pipeline(transaction=False) as pipe:
                pipe.rpush(ack, 1)
                pipe.pexpire(ack, int(PURGE_ACK_SECONDS * 10_000))
                pipe.execute()
        except Exception as exc:  # noqa: BLE001 - the purge waits its bound and answers anyway
            log.warning("could not confirm an invalidation (%s)", type(exc).__name__)

    def _wake(self, target: tuple[str, str], status: ReadyStatus, handed_over: HandedOver | None = None) -> None:
        with self._lock:
            self._last_ready[target] = time.monotonic()
            self._last_ready.move_to_end(target)
            while len(self._last_ready) > READY_MEMORY:
                _, forgotten = self._last_ready.popitem(last=False)
                self._ready_forgotten_at = max(self._ready_forgotten_at, forgotten)
            wait = self._waits.get(target)
            if wait is None:
                return
            wait.generation += 1
            wait.status = status
            wait.handed_over = handed_over
            event, wait.event = wait.event, threading.Event()
            self.wakeups += 1
        metrics.COLD_WAKEUPS.labels(target[0]).inc()
        event.set()

    # -- waiting -----------------------------------------------------------------------

    def ready_since(self, namespace: str, key: str, since: float) -> bool:
        """Whether a refresh of the key may have been published since `since` (time.monotonic())
        without this process knowing yet who waits for it: True when one was received since
        then, or when the subscription is down (nothing is received), or when the key's record
        was forgotten. A cold-miss reader that joins after its read asks this to decide whether
        it must read again before it waits: a publish received after it joined wakes it anyway."""
        with self._lock:
            if not self.connected.is_set():
                return True
            last = self._last_ready.get((namespace, key))
            if last is None:
                return self._ready_forgotten_at >= since
            return last >= since

    @contextmanager
    def join(
        self, namespace: str, key: str, read_started: float | None = None, *, counted: bool = True
    ) -> Iterator[WaitHandle]:
        """Register as a waiter for (namespace, key); raises TooManyWaiters past the limit.
        `read_started`: when this waiter's own read (which found no value) started; None for a
        waiter that joins the others without reading (see WaitHandle.waiting_since). A batch
        read counts against the limit once (`counted` for its first key only): it is one request."""
        self.start()
        target = (namespace, key)
        with self._lock:
            if counted and self._active >= self._max_waiters:
                raise TooManyWaiters()
            self._active += counted
            wait = self._waits.get(target)
            coalesced = wait is not None
            if wait is None:
                started = time.monotonic() if read_started is None else read_started
                wait = self._waits[target] = _KeyWait(started)
            elif read_started is not None and read_started < wait.oldest_read:
                wait.oldest_read = read_started
            wait.waiters += 1
            handle = WaitHandle(self, wait, coalesced)
        try:
            yield handle
        finally:
            with self._lock:
                self._active -= counted
                wait.waiters -= 1
                if wait.waiters == 0 and self._waits.get(target) is wait:
                    del self._waits[target]

    @property
    def active(self) -> int:
        """Waiters registered in this process, all keys together."""
        return self._active

    def waiting_on(self, namespace: str, key: str) -> int:
        """Waiters registered for one key."""
        with self._lock:
            wait = self._waits.get((namespace, key))
            return 0 if wait is None else wait.waiters


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
