"""A per-origin concurrency limit shared by every worker process and host: a Redis semaphore with leases.

Each origin has a sorted set ``<prefix>:slots:{<origin>}`` (the deployment's prefix,
shared/keys.py): member = the holder's token, score = when its lease expires, in ms on the Redis
clock (``TIME`` inside the scripts, never a host clock). A slot is taken by one script that
first drops expired members (so a holder whose process was SIGKILLed frees its slot when its
lease runs out) and then adds the token if fewer than ``limit`` members remain. A holder renews
its lease while its origin call runs and releases it after.

Waiting. A waiter that finds every slot taken blocks on ``BLPOP`` of the origin's wake-up list
``<prefix>:slots:{<origin>}:wake`` for a slice (about 0.5 s; less if the earliest lease expires
sooner, so a dead holder's slot is taken as soon as its lease ends, or if the caller's timeout
ends first), then tries again. Every release pushes one wake-up, so a freed slot is taken within
a round trip, not after a poll interval; Redis serves clients blocked on one list first come
first served, which makes the hand-over fair-ish (a newcomer may still take a slot first).

Why not jittered polling capped at 100 ms: it sends about 10 commands a second per waiter and
still takes a freed slot up to 100 ms late. Here a waiter sends about 5 (one script and one BLPOP
per slice); the slice only bounds the delay after what sends no wake-up (a wake-up taken by a
waiter that then lost the race to a newcomer, a renewal that moved the earliest expiry).
The list keeps at most one wake-up: a release that comes while a waiter is between its attempt
and its BLPOP is not lost, and wake-ups piled up while nobody waited cost a later waiter one
extra attempt, not a burst of them.

The price of BLPOP: each waiter holds one pooled connection while it blocks, so the client's pool
must allow one connection per concurrent waiter, and the client's socket timeout must exceed the
slice. Under gevent monkey patching the blocked socket yields to other greenlets like any other.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from shared.keys import DEFAULT_KEYSPACE, Keyspace
from shared.metrics import ORIGIN_SLOT_WAIT
from shared.pipeline import ScriptCall
from shared.protocol import lua_script

WAIT_SLICE_S = 0.5  # the longest one BLPOP blocks before the waiter retries on its own
WAKE_TTL_MS = 60_000  # an unused wake-up list goes away after this
WAKE_LIST_CAP = 1  # wake-ups kept for waiters not blocked yet (see the docstring)


def slots_key(origin_name: str, keys: Keyspace = DEFAULT_KEYSPACE) -> str:
    return keys.slots(origin_name)


def wake_key(origin_name: str, keys: Keyspace = DEFAULT_KEYSPACE) -> str:
    return f"{keys.slots(origin_name)}:wake"


# ACQUIRE: take a slot if fewer than limit unexpired leases are held.
# KEYS[1] slots (sorted set: token -> lease expiry ms)
# ARGV[1] token, ARGV[2] limit, ARGV[3] lease ttl ms
# A token that already holds a slot keeps it and gets a fresh lease (a retried acquire whose
# reply was lost must not take a second slot).
# Returns {acquired, held, next_expiry_in_ms}
#   acquired: 1 if the token holds a slot now, else 0
#   held: unexpired leases after this call
#   next_expiry_in_ms: ms until the earliest lease expires (-1 when none is held)
ACQUIRE = lua_script(
    """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[3])
local held = redis.call('ZCARD', KEYS[1])
local acquired = 0
if held < tonumber(ARGV[2]) or redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  held = held + redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
  acquired = 1
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_expiry = -1
if first[2] then next_expiry = tonumber(first[2]) - now end
return {acquired, held, next_expiry}
"""
)

# RENEW: extend a lease that has not expired yet.
# KEYS[1] slots; ARGV[1] token, ARGV[2] lease ttl ms
# Returns 1 if renewed, 0 if the token holds no unexpired lease (the slot may be someone else's).
RENEW = lua_script(
    """
local now = now_ms()
local expiry = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not expiry or expiry <= now then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""
)

# RELEASE: give the slot back and wake one waiter.
# KEYS[1] slots, KEYS[2] wake-up list; ARGV[1] token, ARGV[2] wake-up list cap, ARGV[3] its ttl ms
# Returns 1 if the token held a slot (a wake-up was pushed), else 0.
RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# IN_FLIGHT: count unexpired leases without changing anything (safe at scrape time).
# KEYS[1] slots. Returns the count.
IN_FLIGHT = lua_script(
    """
local now = now_ms()
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)


@dataclass(frozen=True)
class AcquireAttempt:
    acquired: bool
    held: int
    next_expiry_in_ms: int  # -1 when no lease is held

    @classmethod
    def decode(cls, reply: list[Any]) -> AcquireAttempt:
        acquired, held, next_expiry_in_ms = reply
        return cls(bool(int(acquired)), int(held), int(next_expiry_in_ms))


class OriginSlots:
    """At most `limit` holders of one origin at once, across every process and host."""

    def __init__(self, client: Any, origin_name: str, keys: Keyspace = DEFAULT_KEYSPACE) -> None:
        self.origin_name = origin_name
        self._client = client
        self._keys = [slots_key(origin_name, keys), wake_key(origin_name, keys)]
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._in_flight = client.register_script(IN_FLIGHT)
        # This process's own holders (see acquire): token -> until when (time.monotonic()) its
        # lease runs, as Redis counts it, so that a holder that never released stops counting.
        self._local = threading.Condition()
        self._local_holders: dict[str, float] = {}

    def acquire(self, token: str, limit: int, ttl_ms: int, timeout_s: float) -> bool:
        """Take a slot for `token` with a lease of ttl_ms, waiting up to timeout_s for one.
        Returns False if none came free in time."""
        if limit < 1 or ttl_ms < 1:
            raise ValueError("limit and ttl_ms must be at least 1")
        started = time.monotonic()
        deadline = started + max(0.0, timeout_s)
        # More refreshes of this process than `limit` could never all hold a slot: while this
        # process's own holders fill the limit, the excess waits here for one of them to release
        # rather than asking Redis again at every wake-up (py-spy: the slot polling of a worker
        # with WORKER_CONCURRENCY above ORIGIN_MAX_CONCURRENCY was an eighth of its CPU). Redis
        # still decides, for every process and host: past WAIT_SLICE_S the waiter asks it anyway.
        try:
            while True:
                self._wait_for_local_place(limit, deadline)
                attempt = self.try_acquire(token, limit, ttl_ms)
                if attempt.acquired:
                    self._hold_locally(token, ttl_ms)
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wait_for_wake(left, attempt.next_expiry_in_ms)
        finally:
            ORIGIN_SLOT_WAIT.labels(self.origin_name).observe(time.monotonic() - started)

    def _wait_for_local_place(self, limit: int, deadline: float) -> None:
        with self._local:
            left = min(deadline - time.monotonic(), WAIT_SLICE_S)
            while left > 0 and self._local_held() >= limit:
                self._local.wait(left)
                left = min(deadline - time.monotonic(), WAIT_SLICE_S)

    def _local_held(self) -> int:
        now = time.monotonic()
        for token in [t for t, until in self._local_holders.items() if until <= now]:
            del self._local_holders[token]
        return len(self._local_holders)

    def _hold_locally(self, token: str, ttl_ms: int) -> None:
        """`token` holds a slot whose lease runs ttl_ms from now (taken or renewed)."""
        with self._local:
            self._local_holders[token] = time.monotonic() + ttl_ms / 1000

    def _leave_local(self, token: str) -> None:
        """`token` gives its slot back: the next refresh waiting in this process may try."""
        with self._local:
            if self._local_holders.pop(token, None) is not None:
                self._local.notify()

    def room_here(self, limit: int) -> bool:
        """Fewer than `limit` of this process's holders hold a slot (a first try may succeed)."""
        with self._local:
            return self._local_held() < limit

    def try_acquire_call(self, token: str, limit: int, ttl_ms: int) -> ScriptCall:
        """One attempt (`try_acquire`) as a call to send with another (a refresh's claim:
        shared/pipeline.py); `took` reads its reply."""
        return ScriptCall(self._acquire, self._keys[:1], [token, limit, ttl_ms])

    @staticmethod
    def _got(reply: Any) -> bool:
        """Did the attempt whose reply this is (try_acquire_call's; an error: no) take a slot?"""
        return reply is not None and not isinstance(reply, Exception) and AcquireAttempt.decode(reply).acquired

    def took(self, token: str, reply: Any, ttl_ms: int) -> bool:
        """Whether the attempt `try_acquire_call` sent got `token` a slot; a slot taken so is a
        wait of 0 s (herdless_origin_slot_wait_seconds)."""
        if not self._got(reply):
            return False
        self._hold_locally(token, ttl_ms)
        ORIGIN_SLOT_WAIT.labels(self.origin_name).observe(0.0)
        return True

    def give_back_unclaimed(self, token: str, reply: Any) -> None:
        """The claim sent with an attempt failed: give back the slot the attempt may have taken."""
        if self._got(reply):
            with suppress(Exception):  # Redis is down: the slot's lease expires on its own
                self.release(token)

    def try_acquire(self, token: str, limit: int, ttl_ms: int) -> AcquireAttempt:
        """One attempt, no waiting."""
        return AcquireAttempt.decode(self._acquire(keys=self._keys[:1], args=[token, limit, ttl_ms]))

    def renew(self, token: str, ttl_ms: int) -> bool:
        """Extend token's lease to ttl_ms from now; False if it had already expired (slot lost)."""
        renewed = bool(self._renew(keys=self._keys[:1], args=[token, ttl_ms]))
        if renewed and token in self._local_holders:
            self._hold_locally(token, ttl_ms)
        return renewed

    def release(self, token: str) -> None:
        """Give the slot back (a no-op if the lease is gone) and wake one waiter."""
        self._leave_local(token)
        self._release(keys=self._keys, args=[token, WAKE_LIST_CAP, WAKE_TTL_MS])

    def release_call(self, token: str) -> ScriptCall:
        """`release` as a call to send with another (a refresh's write: shared/pipeline.py). The
        origin call is over: the local place goes back now, the Redis slot with the call."""
        self._leave_local(token)
        return ScriptCall(self._release, self._keys, [token, WAKE_LIST_CAP, WAKE_TTL_MS])

    def in_flight(self) -> int:
        """Unexpired leases held now, by every process and host."""
        return int(self._in_flight(keys=self._keys[:1]))

    def _wait_for_wake(self, left_s: float, next_expiry_in_ms: int) -> None:
        # Jitter spreads waiters that all time out together (e.g. after a holder died).
        block = WAIT_SLICE_S * random.uniform(0.8, 1.0)
        if next_expiry_in_ms >= 0:
            block = min(block, next_expiry_in_ms / 1000 + 0.005)
        block = min(block, left_s)
        # BLPOP's timeout is in seconds, 0 means forever: never ask for less than a millisecond.
        self._client.blpop([self._keys[1]], timeout=max(0.001, round(block, 3)))
