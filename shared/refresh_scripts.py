"""The Lua scripts of a refresh run (the worker half, shared/refresher.py): claim the key, keep
the lease while the origin call runs, then write under the fences or record the failure, and
let the message go.

The entry's fields, the lease and marker grammar and the prelude are shared/scripts.py's
(its docstring tells them); these scripts are composed with the same prelude.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.protocol import FailureCode, LuaArgs, WriteMode, lua_script
from shared.xfetch import DURATION_GAIN, SPREAD_GAIN, SPREAD_WEIGHT

# FENCED_WRITE: store a refreshed value only while its writer still holds the key's lease, and
# only if its origin call started after the stored value's, after any hard purge (tombstone),
# after any soft purge (field sp) and after the last purge of any group it belongs to
# (group_purge_ms, read when its key was enlisted: shared/groups.py). Releases the lease either way.
# Holding the lease is what makes a purge final: a purge deletes the lease, so a refresh that was
# running when it happened can never write, however long its origin call took. The start-time
# checks make a refresher paused past its lease harmless as well.
# Three modes, all behind the same fences:
#   store       the origin sent a value: store it (a fresh XFetch draw, d measured: the time from
#               won_at_ms to this write folded into dm and dv as shared/xfetch.py:smooth_duration
#               does, d = dm + SPREAD_WEIGHT * dv).
#   revalidate  the origin answered 304 to the validators of the entry stored at
#               validated_at_ms: keep that entry's bytes for a new lifetime (new at, soft, draw,
#               d), but only if it is still the stored entry. A 304 confirms the bytes whose
#               validator was sent and no others, so it can never extend the life of a value
#               that replaced them.
#   drop        the origin's answer may not be stored (no-store, private): delete the entry and
#               hand the body to the waiting readers in the ready message (hand_over).
# KEYS[1] entry, KEYS[2] lease, KEYS[3] tombstone, KEYS[4] queued marker (kept: FINISH clears it)
# ARGV by name (FencedWriteArgs): run_token (the lease value this run holds), started_ms,
# won_at_ms, mode (a WriteMode), value (store mode), content_type, etag (ours), origin_etag,
# origin_last_modified ("" keeps the stored ones on revalidate), soft_ttl_ms, stale_ms (stored
# lifetime past soft), stale_if_error_ms, negative, u (this value's XFetch draw in (0,1]),
# validated_at_ms (the at of the revalidated entry), tags (the value's, newline-joined: field tg;
# a revalidation keeps the stored ones), group_purge_ms (the latest purge moment of the value's
# groups, 0 for none), channel (the ready channel), message (its
# "ready" message for the key), hand_over (the message to publish instead when a drop lands: the
# body for the waiting readers; "" hands nothing over)
# Publishes message on the channel in every case (hand_over instead when a drop lands and has
# one), so cold-miss waiters wake and near-caches drop the key in the same step as the write.
# Returns {status, d, soft, now}: status (a WriteOutcome) "written" (store), "revalidated",
# "uncacheable" (drop), "fenced" (an older call than what is stored or purged, or a 304 for bytes
# no longer stored) or "lost_lease" (the lease is no longer this run's)
FENCED_WRITE = lua_script(
    """
local now = now_ms()
local a = named_args()
local started = tonumber(a.started_ms)
local mode = a.mode
local function publish(landed_drop)
  local message = a.message
  if landed_drop and a.hand_over ~= '' then message = a.hand_over end
  redis.call('PUBLISH', a.channel, message)
end
local function refuse(status, release)
  if release then redis.call('DEL', KEYS[2]) end
  publish(false)
  return {status, 0, 0, now}
end
if redis.call('GET', KEYS[2]) ~= a.run_token then return refuse('lost_lease', false) end
local tomb = tonumber(redis.call('GET', KEYS[3]))
if tomb and started <= tomb then return refuse('fenced', true) end
if started <= tonumber(a.group_purge_ms) then return refuse('fenced', true) end
local prev = redis.call('HMGET', KEYS[1], 'at', 'd', 'sp', 'v', 'ct', 'etag', 'oetag', 'olm', 'neg', 'tg', 'dm', 'dv')
local at = tonumber(prev[1])
if at and started <= at then return refuse('fenced', true) end
local sp = tonumber(prev[3])
if sp and started <= sp then return refuse('fenced', true) end
if mode == 'revalidate' and (not at or at ~= tonumber(a.validated_at_ms) or prev[9] == '1') then
  return refuse('fenced', true)
end
if mode == 'drop' then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[2])
  publish(true)
  return {'uncacheable', 0, 0, now}
end
local measured = now - tonumber(a.won_at_ms)
if measured < 1 then measured = 1 end
local dm, dv = measured, 0
local pm = tonumber(prev[11]) or tonumber(prev[2])
if pm and pm > 0 then
  local err = measured - pm
  dm = pm + @DURATION_GAIN@ * err
  local pv = tonumber(prev[12]) or 0
  dv = pv + @SPREAD_GAIN@ * (math.abs(err) - pv)
end
local d = dm + @SPREAD_WEIGHT@ * dv
local soft_ttl = tonumber(a.soft_ttl_ms)
local soft = now + soft_ttl
local v, ct, etag, status = a.value, a.content_type, a.etag, 'written'
local oetag, olm, tags = a.origin_etag, a.origin_last_modified, a.tags
if mode == 'revalidate' then
  v, ct, etag, status, tags = prev[4], prev[5], prev[6], 'revalidated', prev[10] or ''
  if oetag == '' then oetag = prev[7] or '' end
  if olm == '' then olm = prev[8] or '' end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', v, 'ct', ct, 'etag', etag, 'at', started,
           'soft', soft, 'd', string.format('%.17g', d), 'dm', string.format('%.17g', dm),
           'dv', string.format('%.17g', dv), 'neg', a.negative, 'fails', 0, 'u', a.u,
           'oetag', oetag, 'olm', olm, 'ttl', a.soft_ttl_ms, 'st', a.stale_ms, 'sie', a.stale_if_error_ms,
           'tg', tags)
redis.call('PEXPIRE', KEYS[1], soft_ttl + tonumber(a.stale_ms))
redis.call('DEL', KEYS[2])
publish(false)
return {status, string.format('%.17g', d), soft, now}
""".replace("@DURATION_GAIN@", repr(DURATION_GAIN))
    .replace("@SPREAD_GAIN@", repr(SPREAD_GAIN))
    .replace("@SPREAD_WEIGHT@", repr(SPREAD_WEIGHT)),
    refused_at_maxmemory=True,
)


@dataclass(frozen=True)
class FencedWriteArgs(LuaArgs):
    run_token: str
    started_ms: int
    won_at_ms: int
    mode: WriteMode
    value: bytes
    content_type: str
    etag: str
    origin_etag: str
    origin_last_modified: str
    soft_ttl_ms: int
    stale_ms: int
    stale_if_error_ms: int
    negative: bool
    u: float
    validated_at_ms: int
    tags: str
    group_purge_ms: int
    channel: str
    message: str
    hand_over: str


# RECORD_FAILURE: the origin failed. Keep (or take) the lease as a cooldown so reads stop
# enqueueing, stretch the stored lifetime of a stale value by stale-if-error, and wake the key's
# cold-miss waiters: they answer with the failure's code at once, in every web process.
# KEYS[1] entry, KEYS[2] lease, KEYS[3] queued marker (kept: FINISH clears it)
# ARGV by name (RecordFailureArgs): run_token, cooldown_base_ms, cooldown_max_ms, stale_ms and
# stale_if_error_ms (both used only when the entry stores none of its own: st, sie),
# min_cooldown_ms (e.g. until the breaker may half-open), origin_called ("1" if the origin was
# called and failed, "0" if the breaker refused the call or no slot came free: the key's failure
# streak, which doubles its cooldown, counts only real origin failures), reason (the FailureCode
# cold reads answer with while the cooldown lasts), channel (the ready channel), message (its
# "error" message for the key)
# Publishes message on the channel whether or not the lease was still this run's, in the same
# step as the cooldown it announces.
# Returns {fails, cooldown ms}
RECORD_FAILURE = lua_script(
    """
local a = named_args()
local fails = 1
local soft = tonumber(redis.call('HGET', KEYS[1], 'soft'))
if soft and redis.call('HGET', KEYS[1], 'neg') ~= '1' then
  if a.origin_called == '1' then
    fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
  else
    fails = math.max(1, tonumber(redis.call('HGET', KEYS[1], 'fails')) or 1)
  end
  local own = redis.call('HMGET', KEYS[1], 'st', 'sie')
  local keep_until = soft + (tonumber(own[1]) or tonumber(a.stale_ms))
    + (tonumber(own[2]) or tonumber(a.stale_if_error_ms))
  local current = redis.call('PEXPIRETIME', KEYS[1])
  if current > 0 and keep_until > current then redis.call('PEXPIREAT', KEYS[1], keep_until) end
end
local cooldown = tonumber(a.cooldown_base_ms) * (2 ^ (math.min(fails, 20) - 1))
if cooldown > tonumber(a.cooldown_max_ms) then cooldown = tonumber(a.cooldown_max_ms) end
if cooldown < tonumber(a.min_cooldown_ms) then cooldown = tonumber(a.min_cooldown_ms) end
cooldown = math.floor(cooldown)
local holder = redis.call('GET', KEYS[2])
if holder == a.run_token or not holder then
  redis.call('SET', KEYS[2], cooldown_value(a.run_token, a.reason), 'PX', cooldown)
end
redis.call('PUBLISH', a.channel, a.message)
return {fails, cooldown}
""",
    refused_at_maxmemory=True,
)


@dataclass(frozen=True)
class RecordFailureArgs(LuaArgs):
    run_token: str
    cooldown_base_ms: int
    cooldown_max_ms: int
    stale_ms: int
    stale_if_error_ms: int
    min_cooldown_ms: int
    origin_called: bool
    reason: FailureCode
    channel: str
    message: str


# CLAIM: a worker starts a refresh task. Turn the lease into this run's own: the lease value
# becomes the run token, unique to this execution. A redelivered copy of the same message carries
# the same task token but can never match a run token, so it can neither claim, renew, write nor
# release a lease that the first run still holds. The queued marker becomes the running marker
# "r:<task token>": the message is the worker's now, but stays unacknowledged until FINISH.
# The lease is this task's if it still holds the task token, or if it is free while the queued
# marker is this task's (a purge deleted the lease of a queued refresh: the refresh will start
# after the purge, so it may run; or the message came back after its run died, and no read has
# taken over since).
# It also reads what a conditional origin call needs of the stored entry (its `at`, origin
# validators and lifetimes: StoredValidators), which saves the run a round trip.
# KEYS[1] lease, KEYS[2] queued marker, KEYS[3] entry; ARGV[1] task token, ARGV[2] run token,
# ARGV[3] lease ttl ms, ARGV[4] marker ttl ms.
# Returns {1, at, oetag, olm, neg, ttl, st, sie} (the entry's fields, false where absent) if
# the lease is now this run's, else {0}.
CLAIM = lua_script(
    """
local lease = redis.call('GET', KEYS[1])
local queued = redis.call('GET', KEYS[2])
local mine = queued == ARGV[1] or queued == running_value(ARGV[1])
if lease == ARGV[1] or (not lease and mine) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], running_value(ARGV[1]), 'PX', ARGV[4])
  local stored = redis.call('HMGET', KEYS[3], 'at', 'oetag', 'olm', 'neg', 'ttl', 'st', 'sie')
  return {1, stored[1], stored[2], stored[3], stored[4], stored[5], stored[6], stored[7]}
end
return {0}
""",
    refused_at_maxmemory=True,
)


# FINISH: a refresh task's message is gone for good: it could not be enqueued, it expired in the
# queue, or a worker acknowledged it after its run. Drop this task's lease (if still unclaimed)
# and its queued or running marker, so that the next read can enqueue again. Only the unclaimed
# task token matches the lease: a lease some run has claimed is never released from here.
# KEYS[1] lease, KEYS[2] queued marker; ARGV[1] task token. Returns the number of keys removed.
FINISH = lua_script(
    """
local n = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then n = n + redis.call('DEL', KEYS[1]) end
local queued = redis.call('GET', KEYS[2])
if queued == ARGV[1] or queued == running_value(ARGV[1]) then n = n + redis.call('DEL', KEYS[2]) end
return n
"""
)


# END_RUN: a run stopped without writing or recording a failure (an unexpected error): free
# its lease, so the next read can enqueue again once the message is acknowledged (FINISH).
# KEYS[1] lease, KEYS[2] queued marker; ARGV[1] run token. Returns nothing.
END_RUN = lua_script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
)


# RENEW_LEASE: extend the lease while the origin call runs, only if it is still ours.
# KEYS[1] lease; ARGV[1] run token, ARGV[2] ttl ms. Returns 1 if renewed, 0 if lost.
RENEW_LEASE = lua_script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
)
