"""NearCache: each web process serves a value Redis just called a HIT from memory until its XFetch moment
(or, for a key read too rarely for an early refresh, until it expires).

Why it is safe. The read decision (shared/xfetch.py) is deterministic for a stored value: its
XFetch draw ``u`` is stored with it, so a value that Redis calls HIT stays a HIT until

    early_ms = soft - min(-d * beta * ln(u), ttl / 4)        (= soft when beta == 0 or d == 0)

on the Redis clock. Before that moment every read of the key would be a HIT with no lease to
take, so the process may answer from memory and Redis would have said the same -- unless the
value changed. Every write and purge publishes an invalidation (shared/coldwait.py), and the
process's one subscription drops the key here. While that subscription is down, invalidations
could be missed, so the cache is bypassed (``suspend``) until the subscription is back, and
flushed then (``resume``). A NearCache starts suspended: nothing is served before the first
subscribe.

Clocks. Redis's clock decides freshness, but a process cannot ask Redis the time on a memory
hit. At each read the engine gives ``put`` the Redis ``now`` of that read; the cache keeps the
offset ``redis_now - host_ms`` where host_ms is the host's *monotonic* clock (wall-clock jumps on
the host do not matter) read in ``begin_read``, i.e. *before* the Redis call was sent. Redis ran
its TIME somewhere inside the round trip, so this offset can only overestimate Redis's clock, by
at most one round trip: entries expire a little early, never late. ``margin_ms`` is subtracted
on top to absorb what the offset cannot see: Redis's wall clock being slewed or stepped by NTP
and rate drift between the two clocks over an entry's life (tens of ppm: ~1 ms per 30 s),
plus the moment between ``get`` and the reply leaving the process. 50 ms is generous for all
of these; an entry served at most ``margin_ms`` earlier than needed costs one Redis read.

The read/invalidate race. A reader gets value A from Redis; a write of B lands and its
invalidation reaches this process *before* the reader calls ``put(A)``: without a guard, A
would then be served until its XFetch moment. So every read starts with ``begin_read``, which
returns a token holding the process's invalidation sequence number; ``put`` refuses the value
when an invalidation of that key (or a clear/suspend) happened after the token was taken. The
per-key record of the last invalidation is a bounded LRU map; evicting a record raises a floor
below which every token is refused. A token is therefore refused only when its own key was
invalidated during its read, or when more than ``INVALIDATION_MEMORY`` other keys were
invalidated during that one read -- rare, so steady invalidation traffic on other keys costs no
false refusals (a single global counter would refuse nearly every put under such traffic).

The one remaining window is the pub/sub delivery delay itself: after a write lands, this
process may serve the previous value until the invalidation arrives (normally well under a
millisecond on one network; bounded by the subscription's liveness check in coldwait.py).

Through a Redis outage (shared/degraded.py). Each slot is also kept, past its HIT moment, until
the value's stale-if-error bound (``keep_until_ms`` of ``put``); before the HIT moment ``get``
serves it, after it only ``get_stale`` does, which the read path asks only while Redis is
unreachable. When the subscription is lost the slots are *held*, not flushed: ``get`` bypasses
them and ``put`` refuses, but ``get_stale`` may still answer them, because every invalidation
published before the loss has been applied -- so no value purged before the outage began is
among them. They are dropped when they can no longer be vouched for: at ``resume`` (invalidations
may have been missed while the subscription was down) and as soon as a read that began after
the loss gets an answer from Redis (``redis_answered``: Redis is up while this process cannot
hear its invalidations).

Early refreshes for keys that are read (``fresh_until_ms`` of ``put``). Past its XFetch moment
a value goes back to Redis, whose read then takes the lease and refreshes it early. That is
worth its cost only for a key that is read within the head start: a key read about once a TTL
that happens to be read in the window pays a whole origin call a refresh-on-expiry cache would
have made later or not at all. Each slot therefore counts the hits it serves; past the XFetch
moment and before ``fresh_until_ms`` (the value's own expiry) it is still served from memory
while its hits so far, scaled to the processes that share the key's reads (``readers``), say
that fewer than one read falls in the head start (``EARLY_MIN_READS``): such a key is refreshed
when it expires, STALE at its first read after that, like any cache. The value served is the
one Redis holds and still calls fresh; only the early refresh is skipped.

Memory. An entry is charged its value's length, its key's UTF-8 length and the measured
overhead ``ENTRY_OVERHEAD_BYTES``; ``max_entries`` bounds the count as well, so that a client
asking for many distinct small keys cannot make the per-entry overhead the bulk of the memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

from shared import metrics
from shared.xfetch import head_start_ms

DEFAULT_MARGIN_MS = 50
# Bytes charged per entry on top of its value's length and its key's UTF-8 length: the slot, the
# engine's ReadResult and what it holds (the value's bytes header, content type, etag, the ints
# and floats of its fields), the key's str header, the (ns, key) tuple and the OrderedDict node.
# Measured with tracemalloc: 20 000 ReadResults as store.read decodes them (content type
# application/json, our 26-character etag, keys of 13 ASCII characters), values of 0, 100 and
# 1 000 bytes: 930-960 bytes per entry beyond value and key before ReadResult and the slot had
# __slots__, 865 with them, 890 with the slot's keep-until. With 900, a 16 MiB budget filled
# with values of 0-200 bytes holds 17.3 MiB (1.08x); the flat 256 it replaced let one hold 54 MB.
# tests/test_nearcache.py checks a filled cache stays within 1.2x its budget.
ENTRY_OVERHEAD_BYTES = 900
DEFAULT_MAX_ENTRIES = 100_000
# Past its XFetch moment a slot keeps serving (no early refresh) while fewer reads than this are
# expected, at the rate its hits show, within the head start.
EARLY_MIN_READS = 1.0
# How many per-key invalidation records are kept for the begin_read/put guard.
INVALIDATION_MEMORY = 65_536


class NearEntry(Protocol):
    """What the cache needs to know of the engine's entry: its value bytes, to size it."""

    @property
    def value(self) -> bytes | None: ...


E = TypeVar("E", bound=NearEntry)


def hit_until_ms(soft_ms: float, delta_ms: float, beta: float, u: float, ttl_ms: float | None) -> float:
    """The Redis-clock moment a stored value stops being a HIT: ``soft`` less XFetch's head start
    (``-d*beta*ln(u)``, at most a share of the value's TTL ``ttl_ms``).

    The same rule as xfetch.decide: a read at ``now`` is a HIT exactly while ``now`` is below
    this (EARLY from this moment on, STALE or MISS from ``soft``)."""
    return soft_ms - head_start_ms(delta_ms, beta, u, ttl_ms)


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0


@dataclass(frozen=True)
class ReadToken:
    """Taken by begin_read before the Redis read; handed to put."""

    seq: int
    host_ms: float


class NearHit(NamedTuple, Generic[E]):
    entry: E
    redis_now_ms: int  # estimated Redis clock now: for Age and max-age
    # Past the HIT moment, while a refresh of the key is under way (put's pending_until_ms):
    # the answer Redis would give is EARLY or STALE, with the refresh suppressed.
    pending: bool = False


@dataclass(slots=True)
class _Slot(Generic[E]):
    entry: E
    size: int
    offset_ms: float  # Redis clock minus host monotonic clock, measured at the read
    serve_until_host_ms: float  # a HIT from memory until then
    fresh_until_host_ms: float  # and, while the key is read less than an early refresh needs, until then
    born_host_ms: float  # when it was put: its hits are counted from here
    hits: int
    keep_until_host_ms: float  # kept (for get_stale, during an outage) until then
    redis_read_ms: int  # the Redis now of the read that produced this slot
    pending_until_host_ms: float = 0.0  # past serve_until, served as pending until then


def entry_size(key: str, value: bytes | None) -> int:
    """What one entry is charged against the byte budget (see ENTRY_OVERHEAD_BYTES)."""
    return len(value or b"") + len(key.encode("utf-8", "surrogatepass")) + ENTRY_OVERHEAD_BYTES


class NearCache(Generic[E]):
    """A per-process LRU, bounded in bytes and entries, of values Redis answered. Thread- and gevent-safe."""

    def __init__(
        self,
        max_bytes: int,
        margin_ms: int = DEFAULT_MARGIN_MS,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = monotonic_ms,
        suspended: bool = True,
        invalidation_memory: int = INVALIDATION_MEMORY,
        readers: int = 1,
    ) -> None:
        """``readers``: how many processes share a key's reads (the web tier's WEB_CONCURRENCY);
        a slot sees about 1/readers of them."""
        if max_bytes < 0 or margin_ms < 0 or max_entries < 1 or readers < 1:
            raise ValueError("max_bytes and margin_ms must be >= 0, max_entries and readers >= 1")
        self.readers = readers
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.margin_ms = margin_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: OrderedDict[tuple[str, str], _Slot[E]] = OrderedDict()
        self._bytes = 0
        self._suspended = suspended
        self._seq = 0  # bumped by every invalidation, clear and suspend
        self._suspended_seq = 0  # reads whose token is at least this began after the last suspend
        self._floor = 0  # tokens below this are refused
        self._invalidated: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._invalidation_memory = max(1, invalidation_memory)
        self._namespace_invalidated: dict[str, int] = {}  # bounded: namespaces are configured
        metrics.NEAR_CACHE_BYTES.set(0)

    # -- state -------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True while values may be served and stored (not suspended, budget above zero)."""
        return not self._suspended and self.max_bytes > 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._slots)

    def suspend(self) -> None:
        """The invalidation feed is down: refuse in-flight puts and bypass until resume(); keep
        the slots held for get_stale (every invalidation sent before now has been applied)."""
        with self._lock:
            if self._suspended:
                return
            self._suspended = True
            self._seq += 1
            self._floor = self._suspended_seq = self._seq
            self._invalidated.clear()

    def resume(self) -> None:
        """The invalidation feed is live again (subscribe handshake done): drop what was held
        (writes may have been missed meanwhile) and serve again."""
        with self._lock:
            self._clear_locked()
            self._suspended = False

    def redis_answered(self, token: ReadToken) -> None:
        """The read of `token` got Redis's answer. Begun while suspended, it shows that Redis is
        up although invalidations cannot reach this process: drop the held slots."""
        if self._suspended and self._slots and token.seq >= self._suspended_seq:
            with self._lock:
                if self._suspended:
                    self._clear_locked()

    def clear(self) -> None:
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        self._seq += 1
        self._floor = self._seq
        self._invalidated.clear()
        self._slots.clear()
        self._bytes = 0
        metrics.NEAR_CACHE_BYTES.set(0)

    # -- the read path -----------------------------------------------------------------

    def begin_read(self, ns: str, key: str) -> ReadToken:
        """Call just before the Redis read whose result may be put(); pass the token to put."""
        with self._lock:
            return ReadToken(self._seq, self._clock())

    def get(self, ns: str, key: str, *, count: bool = True) -> NearHit[E] | None:
        """The entry and the estimated Redis now, while it is still a HIT; else None. `count`
        False: the lookup is not counted (the web tier's fast path, which counts the hits it
        answers and leaves the rest to a read that looks again)."""
        if not self.enabled:
            if count:
                metrics.NEAR_CACHE.labels("bypassed").inc()
            return None
        target = (ns, key)
        with self._lock:
            slot = self._slots.get(target)
            if slot is None:
                hit = None
            else:
                now = self._clock()
                if now < slot.serve_until_host_ms or (
                    now < slot.fresh_until_host_ms and self._read_too_rarely(slot, now)
                ):
                    self._slots.move_to_end(target)
                    slot.hits += 1
                    hit = NearHit(slot.entry, int(now + slot.offset_ms))
                elif now < slot.pending_until_host_ms:
                    self._slots.move_to_end(target)
                    hit = NearHit(slot.entry, int(now + slot.offset_ms), pending=True)
                else:
                    if now >= slot.keep_until_host_ms:
                        self._drop_locked(target, slot)
                    hit = None
        if count:
            metrics.NEAR_CACHE.labels("hit" if hit is not None else "miss").inc()
        return hit

    def _read_too_rarely(self, slot: _Slot[E], now: float) -> bool:
        # Reads expected in the head start, at the rate of this slot's hits times the readers.
        head = slot.fresh_until_host_ms - slot.serve_until_host_ms
        elapsed = now - slot.born_host_ms
        return slot.hits * self.readers * head < EARLY_MIN_READS * elapsed

    def get_stale(self, ns: str, key: str) -> NearHit[E] | None:
        """The entry and the estimated Redis now while it is within its keep-until bound, held
        or not: what a process answers while Redis is unreachable."""
        target = (ns, key)
        with self._lock:
            slot = self._slots.get(target)
            if slot is None:
                return None
            now = self._clock()
            if now >= slot.keep_until_host_ms:
                self._drop_locked(target, slot)
                return None
            self._slots.move_to_end(target)
            return NearHit(slot.entry, int(now + slot.offset_ms))

    def put(
        self,
        ns: str,
        key: str,
        entry: E,
        redis_now_ms: int,
        early_ms: float,
        token: ReadToken,
        keep_until_ms: float | None = None,
        fresh_until_ms: float | None = None,
        pending_until_ms: float | None = None,
    ) -> bool:
        """Keep an entry Redis just answered: served by get until ``early_ms`` (Redis clock, see
        hit_until_ms; at or before now for a value Redis did not call HIT), and past it until
        ``fresh_until_ms`` (the value's expiry, for a HIT; ``early_ms`` when None) while the key
        is read too rarely for an early refresh; kept for get_stale until ``keep_until_ms`` (its
        stale-if-error bound; ``early_ms`` when None). ``pending_until_ms``: a refresh of the key
        is under way (Redis answered EARLY or STALE with its lease held): until then, or until
        the refresh's publish drops the key, get answers it as pending (``NearHit.pending``),
        as Redis would answer every read meanwhile, without asking Redis.

        Refused (False) while suspended, when the key was invalidated or the cache cleared
        since ``token`` was taken, when the entry alone exceeds the budget, when both moments
        are already past, or when a slot from a later Redis read is already there."""
        target = (ns, key)
        size = entry_size(key, entry.value)
        if size > self.max_bytes:
            return False
        offset = redis_now_ms - token.host_ms
        serve_until = early_ms - offset - self.margin_ms
        fresh_until = max(early_ms, fresh_until_ms or early_ms) - offset - self.margin_ms
        keep_until = max(early_ms, keep_until_ms or early_ms) - offset - self.margin_ms
        pending_until = min(keep_until, (pending_until_ms or 0.0) - offset - self.margin_ms)
        with self._lock:
            if self._suspended or token.seq < self._floor or self._invalidated.get(target, -1) > token.seq:
                return False
            if self._namespace_invalidated.get(ns, -1) > token.seq:
                return False
            now = self._clock()
            if keep_until <= now:
                return False
            old = self._slots.get(target)
            if old is not None:
                if old.redis_read_ms > redis_now_ms:
                    return False
                self._drop_locked(target, old)
            # Make room first, so the account never exceeds the budget, not even for a moment.
            while self._slots and (self._bytes + size > self.max_bytes or len(self._slots) >= self.max_entries):
                victim_key, victim = next(iter(self._slots.items()))
                self._drop_locked(victim_key, victim)
            self._slots[target] = _Slot(
                entry, size, offset, serve_until, fresh_until, now, 0, keep_until, redis_now_ms, pending_until
            )
            self._bytes += size
            metrics.NEAR_CACHE_BYTES.set(self._bytes)
        return True

    def invalidate(self, ns: str, key: str) -> bool:
        """A write or purge of the key happened: drop it and refuse puts of reads begun before now."""
        target = (ns, key)
        with self._lock:
            self._seq += 1
            self._invalidated[target] = self._seq
            self._invalidated.move_to_end(target)
            while len(self._invalidated) > self._invalidation_memory:
                _, forgotten = self._invalidated.popitem(last=False)
                self._floor = max(self._floor, forgotten)
            slot = self._slots.get(target)
            if slot is not None:
                self._drop_locked(target, slot)
        if slot is not None:
            metrics.NEAR_CACHE.labels("invalidated").inc()
        return slot is not None

    def invalidate_namespace(self, ns: str) -> int:
        """A purge of the whole namespace happened: drop its keys and refuse puts of reads of it
        begun before now. Returns how many were dropped."""
        with self._lock:
            self._seq += 1
            self._namespace_invalidated[ns] = self._seq
            doomed = [(target, slot) for target, slot in self._slots.items() if target[0] == ns]
            for target, slot in doomed:
                self._drop_locked(target, slot)
        if doomed:
            metrics.NEAR_CACHE.labels("invalidated").inc(len(doomed))
        return len(doomed)

    def _drop_locked(self, target: tuple[str, str], slot: _Slot[E]) -> None:
        del self._slots[target]
        self._bytes -= slot.size
        metrics.NEAR_CACHE_BYTES.set(self._bytes)


class NoNearCache(Generic[E]):
    """The near-cache of a process that runs without one (NEAR_CACHE=false): it keeps nothing."""

    def get(self, ns: str, key: str, *, count: bool = True) -> NearHit[E] | None:
        return None

    def get_stale(self, ns: str, key: str) -> NearHit[E] | None:
        return None

    def begin_read(self, ns: str, key: str) -> ReadToken:
        return ReadToken(0, 0.0)

    def put(self, ns: str, key: str, entry: E, *moments: object, **keep_until: object) -> bool:
        return False

    def redis_answered(self, token: ReadToken) -> None:
        pass

    def invalidate(self, ns: str, key: str) -> bool:
        return False

    def invalidate_namespace(self, ns: str) -> int:
        return 0

    def __len__(self) -> int:
        return 0
