"""One circuit breaker per origin, its state shared by every worker process and host through Redis.

States, told once (the Lua scripts below are the only code that changes them):

- closed: every call goes to the origin. Each counted failure adds one to ``fails``; a success
  sets it back to 0. The call that brings ``fails`` to ``fail_max`` opens the breaker.
- open: no call goes to the origin until ``opened_at + reset_timeout`` (both on the Redis
  clock, ``TIME`` inside the script, so a host's clock or time zone never decides).
- half-open: the first call after the reset timeout takes the probe (a token in the breaker's
  hash, with an expiry on the Redis clock so a probe whose process died frees itself) and is the
  only call, across every process and host, that reaches the origin. Everyone else is refused.
  A good probe closes the breaker, a failed one opens it for another full reset timeout.

Each transition is one Lua script, so deciding and recording are atomic and no in-process lock is
held while the origin call runs: a gevent or threads pool runs the calls of one origin side by
side (pybreaker's own ``CircuitBreaker.call`` holds its lock for the whole call, pybreaker#55).
From pybreaker we keep its vocabulary: the state names (``BreakerState``), ``CircuitBreakerError``
as the base of ``BreakerOpen``, and its exclusion rules (``is_system_error``).

What counts. Only the origin's own failures (``OriginError.trips_breaker``: a timeout, a refused or
reset connection, a 5xx, 408 or 429) add to ``fails``. A failure a client can provoke by its
choice of key (another 4xx, a body over ORIGIN_MAX_BYTES, invalid JSON: ``KeyFault``) is the
key's problem: it cools that key down, and for the breaker it is an answer from a working origin,
like ``NotFound``. Otherwise five reads of keys the origin answers 400 would open the breaker of
every namespace of that origin.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pybreaker
from redis.exceptions import RedisError

from shared.keys import DEFAULT_KEYSPACE, Keyspace
from shared.metrics import BREAKER_TRANSITIONS
from shared.origin import NotFound, OriginError
from shared.protocol import BreakerOutcome, BreakerState, BreakerVerdict, lua_script
from shared.settings import Settings
from shared.store import new_token

T = TypeVar("T")
log = logging.getLogger("herdless.breaker")


class BreakerOpen(pybreaker.CircuitBreakerError):
    """The breaker refused the call; retry_after_ms says when a probe may be tried."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"circuit breaker open, retry in {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


def breaker_state_key(origin_name: str, keys: Keyspace = DEFAULT_KEYSPACE) -> str:
    """A plain string, "closed" / "open" / "half-open": what herdless_breaker_state reads."""
    return f"{keys.breaker(origin_name)}:state"


def breaker_fields_key(origin_name: str, keys: Keyspace = DEFAULT_KEYSPACE) -> str:
    """A hash: fails (consecutive counted failures), opened_at (Redis ms), probe, probe_until (ms)."""
    return f"{keys.breaker(origin_name)}:h"


# ADMIT: may this call reach the origin? Moves open -> half-open once the reset timeout is over.
# KEYS[1] state (string), KEYS[2] fields (hash)
# ARGV[1] reset timeout ms, ARGV[2] token (becomes the probe if this call probes),
# ARGV[3] probe ttl ms, ARGV[4] retry-after ms to suggest while another call probes
# The words it stores and returns are BreakerState's and BreakerVerdict's (shared/protocol.py).
# Returns {verdict, retry_after_ms, transition}
#   verdict: "call" (closed), "probe" (this call is the one half-open probe), "refuse"
#   retry_after_ms: when a refused caller may try again (0 unless refused)
#   transition: "half-open" if this call moved the breaker there, else ""
ADMIT = lua_script(
    """
local now = now_ms()
local state = redis.call('GET', KEYS[1]) or 'closed'
local fails = tonumber(redis.call('HGET', KEYS[2], 'fails')) or 0
if state == 'closed' then return {'call', 0, '', now, fails} end
local transition = ''
if state == 'open' then
  local opened_at = tonumber(redis.call('HGET', KEYS[2], 'opened_at')) or 0
  local remaining = opened_at + tonumber(ARGV[1]) - now
  if remaining > 0 then return {'refuse', remaining, '', now, fails} end
  redis.call('SET', KEYS[1], 'half-open')
  transition = 'half-open'
else
  local until_ms = tonumber(redis.call('HGET', KEYS[2], 'probe_until')) or 0
  if until_ms > now then return {'refuse', tonumber(ARGV[4]), '', now, fails} end
end
redis.call('HSET', KEYS[2], 'probe', ARGV[2], 'probe_until', now + tonumber(ARGV[3]))
return {'probe', 0, transition, now, fails}
"""
)

# RECORD: the outcome of an admitted call.
# KEYS[1] state, KEYS[2] fields
# ARGV[1] a BreakerOutcome, "ok" or "failed", ARGV[2] token, ARGV[3] fail_max
# A failure of the current probe, or the fail_max-th consecutive failure while closed, opens the
# breaker (opened_at = now); a success of the current probe closes it. Outcomes of calls that
# were admitted before the breaker left "closed" change nothing once it has.
# Returns {transition, fails}: transition "open", "closed" or ""; fails after this outcome
RECORD = lua_script(
    """
local now = now_ms()
local state = redis.call('GET', KEYS[1]) or 'closed'
local is_probe = state == 'half-open' and redis.call('HGET', KEYS[2], 'probe') == ARGV[2]
if is_probe then
  redis.call('HDEL', KEYS[2], 'probe', 'probe_until')
  if ARGV[1] == 'ok' then
    redis.call('SET', KEYS[1], 'closed')
    redis.call('HSET', KEYS[2], 'fails', 0)
    return {'closed', 0}
  end
  redis.call('SET', KEYS[1], 'open')
  redis.call('HSET', KEYS[2], 'opened_at', now)
  return {'open', tonumber(redis.call('HGET', KEYS[2], 'fails')) or 0}
end
if state ~= 'closed' then return {'', tonumber(redis.call('HGET', KEYS[2], 'fails')) or 0} end
if ARGV[1] == 'ok' then
  if (tonumber(redis.call('HGET', KEYS[2], 'fails')) or 0) ~= 0 then redis.call('HSET', KEYS[2], 'fails', 0) end
  return {'', 0}
end
local fails = redis.call('HINCRBY', KEYS[2], 'fails', 1)
if fails >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[1], 'open')
  redis.call('HSET', KEYS[2], 'opened_at', now)
  return {'open', fails}
end
return {'', fails}
"""
)

# ABANDON_PROBE: the probe call ended without an outcome (cancelled, or recording it failed):
# free the probe so the next caller may probe at once instead of waiting for probe_until.
# KEYS[1] fields; ARGV[1] token. Returns 1 if the probe was this token's and is now free, else 0.
ABANDON_PROBE = """
if redis.call('HGET', KEYS[1], 'probe') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
return 1
"""

# SNAPSHOT: read the breaker without changing it.
# KEYS[1] state, KEYS[2] fields; ARGV[1] reset timeout ms
# Returns {state, fails, remaining_open_ms}: remaining is 0 unless open and the timeout runs
SNAPSHOT = lua_script(
    """
local now = now_ms()
local state = redis.call('GET', KEYS[1]) or 'closed'
local fails = tonumber(redis.call('HGET', KEYS[2], 'fails')) or 0
local remaining = 0
if state == 'open' then
  local opened_at = tonumber(redis.call('HGET', KEYS[2], 'opened_at')) or 0
  remaining = math.max(0, opened_at + tonumber(ARGV[1]) - now)
end
return {state, fails, remaining}
"""
)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _transition(raw: bytes | str) -> BreakerState | None:
    text = _text(raw)
    return BreakerState(text) if text else None


def counts_against_breaker(exc: BaseException) -> bool:
    """Is this exception of an admitted call a failure of the origin itself? A key's own fault
    (``OriginError.trips_breaker`` false) and anything pybreaker's rules exclude are not."""
    if isinstance(exc, OriginError) and not exc.trips_breaker:
        return False
    return _EXCLUSIONS.is_system_error(exc)


# Only pybreaker's public exclusion rule; this object never calls anything.
_EXCLUSIONS = pybreaker.CircuitBreaker(exclude=[NotFound])


@dataclass(frozen=True)
class Admission:
    verdict: BreakerVerdict
    retry_after_ms: int
    transition: BreakerState | None  # HALF_OPEN if this call moved the breaker there
    now_ms: int  # the Redis clock at admission: when the origin call starts
    fails: int  # consecutive failures recorded so far

    @classmethod
    def decode(cls, reply: list[Any]) -> Admission:
        verdict, retry_after_ms, transition, now_ms, fails = reply
        return cls(
            BreakerVerdict(_text(verdict)), int(retry_after_ms), _transition(transition), int(now_ms), int(fails)
        )


@dataclass(frozen=True)
class Recorded:
    transition: BreakerState | None  # OPEN or CLOSED if this outcome moved the breaker there
    fails: int

    @classmethod
    def decode(cls, reply: list[Any]) -> Recorded:
        transition, fails = reply
        return cls(_transition(transition), int(fails))


@dataclass(frozen=True)
class BreakerSnapshot:
    state: BreakerState
    fails: int
    remaining_open_ms: int

    @classmethod
    def decode(cls, reply: list[Any]) -> BreakerSnapshot:
        state, fails, remaining = reply
        return cls(BreakerState(_text(state)), int(fails), int(remaining))


class OriginBreaker:
    """The breaker of one origin. Holds no state of its own: every decision is a script on Redis,
    so any number of threads, greenlets, processes and hosts share it and call side by side."""

    def __init__(self, client: Any, origin_name: str, settings: Settings) -> None:
        self.origin_name = origin_name
        self.fail_max = settings.breaker_fail_max
        self.reset_timeout_ms = int(settings.breaker_reset_timeout_seconds * 1000)
        # A probe longer than this is presumed dead (its process was killed): another may probe.
        self.probe_ttl_ms = int((settings.origin_timeout_seconds + settings.lease_ttl_seconds) * 1000)
        # Callers refused while another call probes come back after a quarter of the timeout.
        self.probe_busy_retry_ms = max(1000, self.reset_timeout_ms // 4)
        keys = Keyspace.of(settings)
        self._keys = [breaker_state_key(origin_name, keys), breaker_fields_key(origin_name, keys)]
        self._admit = client.register_script(ADMIT)
        self._record = client.register_script(RECORD)
        self._abandon_probe = client.register_script(ABANDON_PROBE)
        self._snapshot = client.register_script(SNAPSHOT)

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot.decode(self._snapshot(keys=self._keys, args=[self.reset_timeout_ms]))

    @property
    def state(self) -> BreakerState:
        return self.snapshot().state

    def remaining_open_ms(self) -> int:
        """How long the breaker stays open, on the Redis clock (0 unless open)."""
        return self.snapshot().remaining_open_ms

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call fn(*args) if the breaker lets it through; raise BreakerOpen if not.
        The origin's own exception is re-raised after being counted."""
        return self.call_timed(fn, *args)[0]

    def call_timed(self, fn: Callable[..., T], *args: Any) -> tuple[T, int]:
        """`call`, also returning the Redis clock (ms) at which the call was admitted: the
        start of the origin call, for fencing, without another round trip."""
        token = new_token()
        admission = Admission.decode(
            self._admit(
                keys=self._keys,
                args=[self.reset_timeout_ms, token, self.probe_ttl_ms, self.probe_busy_retry_ms],
            )
        )
        self._count(admission.transition, was=BreakerState.OPEN, fails=admission.fails)
        if admission.verdict is BreakerVerdict.REFUSE:
            raise BreakerOpen(admission.retry_after_ms)
        probing = admission.verdict is BreakerVerdict.PROBE
        recorded = False
        try:
            try:
                result = fn(*args)
            except Exception as exc:
                if counts_against_breaker(exc):
                    recorded = self._finish(token, BreakerOutcome.FAILED, admission, exc=exc)
                else:
                    recorded = self._finish(token, BreakerOutcome.OK, admission)
                raise
            recorded = self._finish(token, BreakerOutcome.OK, admission)
            return result, admission.now_ms
        finally:
            if probing and not recorded:
                self._release_probe(token)

    def _finish(
        self, token: str, outcome: BreakerOutcome, admission: Admission, exc: BaseException | None = None
    ) -> bool:
        """Record the outcome; True if it was recorded. A Redis error here must not turn a good
        origin answer into a failure, so it is logged (the probe, if any, is freed by the caller)."""
        if outcome is BreakerOutcome.OK and admission.verdict is BreakerVerdict.CALL and admission.fails == 0:
            # The common case costs no second round trip: a success while closed with no
            # failure on record changes nothing.
            return True
        try:
            recorded = Recorded.decode(self._record(keys=self._keys, args=[outcome, token, self.fail_max]))
        except RedisError:
            log.warning("could not record a call outcome for breaker %s", self.origin_name, exc_info=True)
            return False
        was = BreakerState.HALF_OPEN if admission.verdict is BreakerVerdict.PROBE else BreakerState.CLOSED
        self._count(recorded.transition, was=was, fails=recorded.fails, exc=exc)
        return True

    def _release_probe(self, token: str) -> None:
        try:
            self._abandon_probe(keys=self._keys[1:], args=[token])
        except RedisError:
            log.warning("could not free the probe of breaker %s; it expires by itself", self.origin_name)

    def _count(
        self, transition: BreakerState | None, *, was: BreakerState, fails: int, exc: BaseException | None = None
    ) -> None:
        """Count a transition, and log it: only the one call whose script made it gets here, so
        each transition is one line across every process and host (in the log of the process
        that made it)."""
        if transition is None:
            return
        BREAKER_TRANSITIONS.labels(self.origin_name, transition).inc()
        reset_s = self.reset_timeout_ms / 1000
        if transition is BreakerState.OPEN and was is BreakerState.CLOSED:
            log.warning(
                "circuit breaker of origin %s: closed -> open after %d consecutive failures (last: %s); "
                "no call to it for %g s (BREAKER_RESET_TIMEOUT_SECONDS), stale values are served meanwhile",
                self.origin_name,
                fails,
                _describe(exc),
                reset_s,
            )
        elif transition is BreakerState.OPEN:
            log.warning(
                "circuit breaker of origin %s: half-open -> open, the probe failed (%s); no call for another %g s",
                self.origin_name,
                _describe(exc),
                reset_s,
            )
        elif transition is BreakerState.HALF_OPEN:
            log.info("circuit breaker of origin %s: open -> half-open, one probe call may go through", self.origin_name)
        else:
            log.info("circuit breaker of origin %s: half-open -> closed, the probe succeeded", self.origin_name)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    message = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
