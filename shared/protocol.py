"""The protocol's vocabulary: every word a script, the store, the engine and the tiers exchange, and the Lua prelude.

Each word is a StrEnum member, so it is also the very string Redis stores, a script returns and
a metric label counts: ``WriteOutcome.WRITTEN == "written"``. Decoding a reply into a member
(``WriteOutcome(raw)``) fails loudly on a word nobody defined.

Markers. A lease's value is the refresher's token, or ``cd:<token>:<code>`` while it serves as a
failure cooldown (``code``: a ``FailureCode``, which cold reads answer with). A queued marker's
value is the task token while its message waits in the queue, ``r:<task token>`` while a worker
runs it. The grammar is written twice, once per language, side by side below: the Lua
predicates of ``LUA_PRELUDE`` and ``parse_marker``; a test holds them to each other.

Script arguments. A script with more than a handful of arguments takes them by name: ARGV is
``name1, value1, name2, value2, ...`` (``LuaArgs.argv``), which the prelude's ``named_args()``
reads into a table. Measured (FENCED_WRITE's 19 fields, Redis 7 on this project's 2-core test
machine, INFO commandstats over 20 000 calls each, two runs): Redis spends 4.4-6.4 µs a call on
positional ARGV, 9.6-14.0 µs on name/value pairs, 12.0-15.6 µs on one cjson-encoded table,
against a round trip of about 120 µs from Python; and a value's raw bytes cannot ride in JSON
without base64. So: pairs, for the scripts that run once per refresh. The read, which runs for
every request that misses the near-cache, keeps its six positional arguments.
"""

from __future__ import annotations

import dataclasses
import re
from enum import StrEnum
from typing import Any, Literal, NamedTuple


class Decision(StrEnum):
    """What a read found (the READ script's and shared/xfetch.py's rule)."""

    HIT = "HIT"
    EARLY = "EARLY"
    STALE = "STALE"
    MISS = "MISS"


class LeaseState(StrEnum):
    """A key's lease as a read sees it (READ's lease_state, INSPECT's lease)."""

    FREE = ""  # free, or taken by this very read (READ: won or not tried)
    HELD = "held"  # a refresh holds it
    COOLDOWN = "cooldown"  # the last refresh failed: the key backs off
    QUEUED = "queued"  # READ only: a refresh task of the key still waits in the queue
    OUT_OF_MEMORY = "out_of_memory"  # READ only: free, but Redis at maxmemory refused to store it


class MarkerState(StrEnum):
    """A key's queued marker (INSPECT)."""

    NONE = ""
    QUEUED = "queued"  # the refresh task's message waits in the queue
    RUNNING = "running"  # a worker runs it (the marker is "r:<task token>")


class WarmOutcome(StrEnum):
    """What a warm-up did with one key (the counts of a warm-up's answer)."""

    ENQUEUED = "enqueued"
    ALREADY_FRESH = "already_fresh"
    IN_FLIGHT = "in_flight"
    COOLING_DOWN = "cooling_down"


class WarmState(StrEnum):
    """One key's state in the WARM script's reply."""

    FRESH = "fresh"  # stored and before soft: left alone
    WON = "won"  # the lease and marker are the warm-up's now: the caller must enqueue
    QUEUED = "queued"  # a refresh task of the key waits in the queue
    HELD = "held"  # a refresh runs
    COOLDOWN = "cooldown"  # the last refresh failed and the key backs off

    @property
    def outcome(self) -> WarmOutcome:
        return _WARM_OUTCOMES[self]


_WARM_OUTCOMES = {
    WarmState.FRESH: WarmOutcome.ALREADY_FRESH,
    WarmState.WON: WarmOutcome.ENQUEUED,
    WarmState.QUEUED: WarmOutcome.IN_FLIGHT,
    WarmState.HELD: WarmOutcome.IN_FLIGHT,
    WarmState.COOLDOWN: WarmOutcome.COOLING_DOWN,
}


class WriteOutcome(StrEnum):
    """FENCED_WRITE's status."""

    WRITTEN = "written"  # a value from the origin is stored
    REVALIDATED = "revalidated"  # a 304: the stored bytes start a new lifetime
    UNCACHEABLE = "uncacheable"  # the answer may not be stored: entry deleted, body handed over
    FENCED = "fenced"  # an older call than what is stored or purged, or a 304 for bytes gone
    LOST_LEASE = "lost_lease"  # the lease is no longer this run's

    @property
    def stored(self) -> bool:
        """A value (new or revalidated) is stored and fresh."""
        return self in (WriteOutcome.WRITTEN, WriteOutcome.REVALIDATED)


class WriteMode(StrEnum):
    """What FENCED_WRITE does behind its fences."""

    STORE = "store"  # the origin sent a value: store it
    REVALIDATE = "revalidate"  # a 304: the stored bytes start a new lifetime
    DROP = "drop"  # the answer may not be stored: delete the entry


class RefreshOutcome(StrEnum):
    """How a refresh task ended: herdless_refresh_total's outcome label (a write's outcome, or
    one of the ends that wrote nothing)."""

    WRITTEN = "written"
    REVALIDATED = "revalidated"
    UNCACHEABLE = "uncacheable"
    FENCED = "fenced"
    LOST_LEASE = "lost_lease"
    ORIGIN_ERROR = "origin_error"  # the origin failed (FailureCode says how)
    BREAKER_OPEN = "breaker_open"  # the breaker refused the call
    SLOT_TIMEOUT = "slot_timeout"  # no concurrency slot of the origin came free
    OUT_OF_MEMORY = "out_of_memory"  # Redis is at maxmemory: the write script was refused
    EXPIRED = "expired"  # the task waited in the queue past its marker and was dropped unrun
    # The task names a namespace this worker does not know (its namespaces file differs from
    # the web tier's). Never a metric label: the name is not one of the configured ones.
    UNKNOWN_NAMESPACE = "unknown_namespace"


class FailureCode(StrEnum):
    """Why a refresh failed: kept in the key's cooldown (``cd:<token>:<code>``), the ``error`` of
    the 502 every cold read of the key answers with while the cooldown lasts."""

    ORIGIN_ERROR = "origin_error"
    ORIGIN_TIMEOUT = "origin_timeout"
    ORIGIN_TOO_LARGE = "origin_too_large"
    ORIGIN_UNIMPORTABLE = "origin_unimportable"
    BREAKER_OPEN = "breaker_open"
    ORIGIN_BUSY = "origin_busy"
    OUT_OF_MEMORY = "out_of_memory"  # Redis at maxmemory refused the refresh's write

    @classmethod
    def parse(cls, text: str) -> FailureCode:
        """The code a cooldown holds; one written by an older worker (none, or a code this
        version does not know) is a plain origin_error."""
        try:
            return cls(text)
        except ValueError:
            return cls.ORIGIN_ERROR


class AnswerOutcome(StrEnum):
    """How a read was answered: the X-Cache word (upper-cased) and the requests metric's label."""

    HIT = "hit"
    EARLY = "early"
    STALE = "stale"
    MISS = "miss"
    TIMEOUT = "timeout"  # a cold wait ran out
    ERROR = "error"  # refused: the key cools down, the origin failed, or the queue refused

    @classmethod
    def of(cls, decision: Decision) -> AnswerOutcome:
        return cls(decision.value.lower())


class Refusal(StrEnum):
    """Why a read was refused when no origin failure is to blame: the ``error`` of its 503."""

    BROKER_UNAVAILABLE = "broker_unavailable"  # the refresh could not be enqueued
    COLD_WAIT_TIMEOUT = "cold_wait_timeout"  # the value is still being computed
    TOO_MANY_WAITERS = "too_many_waiters"  # the process holds MAX_COLD_WAITERS already
    OVERLOADED = "overloaded"  # the process holds MAX_REQUESTS_IN_FLIGHT reads already
    REDIS_UNAVAILABLE = "redis_unavailable"  # the cache store is unreachable
    QUEUE_FULL = "queue_full"  # MAX_QUEUED_REFRESHES refreshes wait in the queue already
    OUT_OF_MEMORY = "out_of_memory"  # Redis is at maxmemory: a cold key cannot be stored now


class Strategy(StrEnum):
    """How a namespace spares its origin (namespaces.toml ``strategy``; docs/configuration.md "Strategies")."""

    XFETCH = "xfetch"  # stale serving and early refresh: the default
    SWR = "swr"  # stale serving, no early refresh
    LOCK = "lock"  # one refresher, the other readers wait; nothing stale is served
    NAIVE = "naive"  # cache-aside, the baseline: every miss calls the origin from the web tier


class Fallback(StrEnum):
    """What a web process answers for a key it holds no value of while Redis is unreachable
    (namespaces.toml ``fallback``; shared/degraded.py)."""

    NONE = "none"  # 503 redis_unavailable at once: the default
    ORIGIN = "origin"  # call the origin from the web tier, one call per key and process at a time


class Freshness(StrEnum):
    """Where a namespace's lifetimes come from (namespaces.toml ``freshness``)."""

    FIXED = "fixed"  # the namespace's TTLs
    ORIGIN = "origin"  # the origin's Cache-Control / Expires, clamped by the namespace's bounds


class RefreshReason(StrEnum):
    """Why a refresh was enqueued (RefreshRequest.reason; herdless_refresh_enqueued_total)."""

    MISS = "miss"
    STALE = "stale"
    EARLY = "early"
    MANUAL = "manual"
    WARM = "warm"


class SuppressReason(StrEnum):
    """Why a read that wanted a refresh enqueued none (herdless_refresh_suppressed_total)."""

    LEASE_HELD = "lease_held"
    COOLDOWN = "cooldown"
    COALESCED = "coalesced"
    QUEUE_FULL = "queue_full"  # MAX_QUEUED_REFRESHES messages wait already
    OUT_OF_MEMORY = "out_of_memory"  # Redis is at maxmemory: the lease could not be stored
    # The web process is behind (its event loop runs late): an early refresh waits for expiry.
    BEHIND = "behind"


# The suppression a read counts when the lease it wanted was not free (any other state: held).
SUPPRESSED_BY_LEASE = {
    LeaseState.COOLDOWN: SuppressReason.COOLDOWN,
    LeaseState.OUT_OF_MEMORY: SuppressReason.OUT_OF_MEMORY,
}


class AdmitState(StrEnum):
    """What the queue's bound said to a refresh about to be enqueued (shared/queuebound.py)."""

    ADMITTED = "admitted"  # send it
    QUEUED = "queued"  # a message of the key still waits in the queue: send none
    FULL = "full"  # MAX_QUEUED_REFRESHES messages wait: send none


class BreakerState(StrEnum):
    """An origin's circuit breaker state (shared/breaker.py): what its state key holds, the
    ``to`` of herdless_breaker_transitions_total; the value herdless_breaker_state reports is
    ``gauge``."""

    CLOSED = "closed"  # pybreaker.STATE_CLOSED: every call goes to the origin
    HALF_OPEN = "half-open"  # pybreaker.STATE_HALF_OPEN: one probe call may go through
    OPEN = "open"  # pybreaker.STATE_OPEN: no call until the reset timeout is over

    @property
    def gauge(self) -> int:
        return _BREAKER_GAUGE[self]


_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class BreakerVerdict(StrEnum):
    """The breaker's ADMIT script: may this call reach the origin?"""

    CALL = "call"  # closed: go ahead
    PROBE = "probe"  # half-open, and this call is the one probe
    REFUSE = "refuse"  # open, or another call probes


class BreakerOutcome(StrEnum):
    """What the breaker's RECORD script is told about an admitted call."""

    OK = "ok"  # the origin answered (a key's own fault included: the origin is up)
    FAILED = "failed"  # the origin itself failed: counted


class ReadyStatus(StrEnum):
    """The status of a message on the ready channel (shared/channels.py)."""

    READY = "ready"  # a write script ran (whatever it stored): re-read the key
    ERROR = "error"  # the refresh failed and the key cools down


# -- markers ----------------------------------------------------------------------------------

COOLDOWN_PREFIX = "cd:"
RUNNING_PREFIX = "r:"

NoCode = Literal[""]


class Marker(NamedTuple):
    """A lease's or queued marker's value, parsed."""

    token: str
    cooldown: FailureCode | None  # a lease that serves as a cooldown, and why
    running: bool  # a queued marker whose task a worker runs


def parse_marker(value: str) -> Marker:
    """The one Python reading of the marker grammar (the module docstring; the Lua prelude's
    is_cooldown, cooldown_code and is_running read the same)."""
    if value.startswith(COOLDOWN_PREFIX):
        token, _, code = value[len(COOLDOWN_PREFIX) :].partition(":")
        return Marker(token, FailureCode.parse(code), False)
    if value.startswith(RUNNING_PREFIX):
        return Marker(value[len(RUNNING_PREFIX) :], None, True)
    return Marker(value, None, False)


def cooldown_value(token: str, code: FailureCode) -> str:
    """A lease that serves as a cooldown (the Lua prelude's cooldown_value)."""
    return f"{COOLDOWN_PREFIX}{token}:{code}"


def lease_state_of(value: str) -> tuple[LeaseState, FailureCode | NoCode]:
    """A stored lease value ("" when absent) as (state, the cooldown's code or "")."""
    if not value:
        return LeaseState.FREE, ""
    marker = parse_marker(value)
    if marker.cooldown is None:
        return LeaseState.HELD, ""
    return LeaseState.COOLDOWN, marker.cooldown


def marker_state_of(value: str) -> MarkerState:
    """A stored queued marker value ("" when absent) as its state."""
    if not value:
        return MarkerState.NONE
    return MarkerState.RUNNING if parse_marker(value).running else MarkerState.QUEUED


# -- the Lua prelude --------------------------------------------------------------------------

# The one prelude of every script: the Redis clock, the marker grammar and named arguments,
# one local function each. lua_script composes into a script the functions its body calls
# (and theirs): a definition costs about 0.25 µs of Redis time per call even when unused,
# and the read runs for every request that misses the near-cache.
LUA_HELPERS: dict[str, str] = {
    "now_ms": """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end""",
    "is_cooldown": f"""
local function is_cooldown(v)
  return v and string.sub(v, 1, {len(COOLDOWN_PREFIX)}) == '{COOLDOWN_PREFIX}'
end""",
    "cooldown_code": f"""
local function cooldown_code(v)
  if not is_cooldown(v) then return '' end
  return string.match(v, '^{COOLDOWN_PREFIX}[^:]*:(.+)$') or ''
end""",
    "cooldown_value": f"""
local function cooldown_value(token, code) return '{COOLDOWN_PREFIX}' .. token .. ':' .. code end""",
    "is_running": f"""
local function is_running(v)
  return v and string.sub(v, 1, {len(RUNNING_PREFIX)}) == '{RUNNING_PREFIX}'
end""",
    "is_waiting": """
local function is_waiting(v) return v and not is_running(v) end""",
    "running_value": f"""
local function running_value(token) return '{RUNNING_PREFIX}' .. token end""",
    # The queue's registry (shared/queuebound.py): drop the entries of messages the broker lost --
    # enqueued a marker lifetime before workers last consumed -- at most `most` of them.
    "trim_lost": """
local function trim_lost(waiting, tokens, consuming, now, marker_ms, most)
  local seen = tonumber(redis.call('GET', consuming))
  if not seen then return end
  local lost = redis.call('ZRANGEBYSCORE', waiting, '-inf', '(' .. (math.min(now, seen) - marker_ms), 'LIMIT', 0, most)
  if #lost > 0 then
    redis.call('ZREM', waiting, unpack(lost))
    redis.call('HDEL', tokens, unpack(lost))
  end
end""",
    "named_args": """
local function named_args()
  local a = {}
  for i = 1, #ARGV, 2 do a[ARGV[i]] = ARGV[i + 1] end
  return a
end""",
}
LUA_PRELUDE = "".join(LUA_HELPERS.values()) + "\n"


def _calls(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){name}\(", text) is not None


def lua_script(body: str, *, refused_at_maxmemory: bool = False) -> str:
    """A script's full text: the prelude's functions that `body` calls (with the ones those
    call), in the prelude's order, then `body`.

    refused_at_maxmemory: the script opens with a ``#!lua`` shebang and no ``allow-oom`` flag, so
    Redis (7+) refuses it with OOM before it runs once used memory passes ``maxmemory``. Without
    one, Redis refuses only a script's first command that may grow memory, and lets every command
    after a first write through: a write script that starts with a DEL wrote past the limit."""
    needed = {name for name in LUA_HELPERS if _calls(body, name)}
    grew = True
    while grew:
        more = {dep for name in needed for dep in LUA_HELPERS if dep != name and _calls(LUA_HELPERS[name], dep)}
        grew = not more <= needed
        needed |= more
    shebang = "#!lua\n" if refused_at_maxmemory else ""
    return shebang + "".join(text for name, text in LUA_HELPERS.items() if name in needed) + "\n" + body


class LuaArgs:
    """Base of a script's named arguments (a frozen dataclass): `argv()` gives ARGV as name/value
    pairs for the prelude's named_args(). A bool travels as "1" / "0"."""

    def argv(self) -> list[Any]:
        out: list[Any] = []
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            out += [field.name, ("1" if value else "0") if isinstance(value, bool) else value]
        return out

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
