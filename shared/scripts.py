"""The Lua scripts that make every cache decision atomic on Redis, the only clock that counts.

Each script touches only the keys of one entry (one hash tag), so it runs on Redis Cluster.
Entry hash fields: v (value bytes), ct (content type), etag (ours: a hash of v), at (ms: when
the origin call that produced or last revalidated it started), soft (ms: fresh until), d (ms:
smoothed refresh duration for XFetch), u (the XFetch draw in (0,1] for this value), neg ("1"
for a cached origin 404), fails (consecutive refresh failures), oetag and olm (the origin's
ETag and Last-Modified: the validators of a conditional refresh), ttl, st and sie (ms: the
value's fresh life, stale window and stale-if-error extension, which freshness = "origin"
takes from the origin's answer).
A lease value is the refresher's token, or cooldown_value(token, code) = "cd:<token>:<code>"
while it serves as a failure cooldown; code is the FailureCode a cold read answers with, so the
worker's diagnosis reaches every web process with the cooldown itself.
The queued marker (KEYS ...:q) names the refresh task whose message the broker holds for the
key, from the read that enqueued it until a worker has acknowledged the message (FINISH):
"<task token>" while the message waits in the queue, running_value(task token) = "r:<task token>"
while a worker runs it.
A waiting marker stops every other read from enqueueing, even when no worker is consuming and
leases run out, so the queue holds at most one refresh per key. A running marker stops reads
only as long as the run's lease lives: once the lease is gone (the run's host died, or a purge
freed it) a read may take over. A worker that stops with refreshes running turns their markers
back into waiting ones (MARK_QUEUED), because their messages return to the queue.

Every script is composed with the prelude of shared/protocol.py (lua_script): now_ms() (the
Redis clock), the marker predicates (is_cooldown, cooldown_code, is_running, is_waiting) and
named_args(), which reads the name/value ARGV of a script whose arguments are a LuaArgs
dataclass below.
At Redis's maxmemory (shared/maxmemory.py) every script that may grow memory is refused before
it runs (refused_at_maxmemory), except READ, whose lease fails soft; the scripts that only
release or delete (FINISH, END_RUN, RENEW_LEASE, PURGE) still run.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.protocol import FailureCode, LuaArgs, WriteMode, lua_script

# READ: classify one read and, unless it is a HIT, try to win the refresh lease.
# KEYS[1] entry, KEYS[2] lease, KEYS[3] queued marker
# ARGV[1] beta, ARGV[2] lease ttl ms, ARGV[3] token, ARGV[4] "1" when stale values may be served,
# ARGV[5] "1" to try the lease (0 for naive), ARGV[6] queued marker ttl ms
# The XFetch draw u is the entry's own (field u, drawn once per stored value): with a draw per
# read, a key read r times a second would refresh about d*beta*ln(r*d*beta) early, so hot keys
# would cost the origin more than one call per TTL.
# Returns {decision, won, now, v, ct, etag, at, soft, d, neg, lease_state, lease_pttl, u, st, cd, sie}
#   (decoded by name in shared/store.py: READ_FIELDS)
#   decision: HIT | EARLY | STALE | MISS (the rule of shared/xfetch.py:decide)
#   won: 1 when this request took the lease and must enqueue the refresh
#   lease_state: "" (won or not tried), "held" (a refresh is running), "cooldown" (recent
#   failure), "queued" (a refresh task for this key is still waiting in the queue),
#   "out_of_memory" (the lease was free, but Redis at maxmemory refused to store it: the value is
#   served without a refresh; the SET is the script's only write that may grow memory, in a pcall)
#   cd: while cooling down, why the last refresh failed (the reason in the lease value), else ""
#   st, sie: the value's stale window and stale-if-error allowance (ms), when stored with it
# The lease is taken when it is free and no message of the key waits in the queue (no marker, or
# the marker of a run whose lease is gone: that run cannot write any more).
# ARGV stays positional: see shared/protocol.py (named pairs would cost every read ~5 µs of Redis).
READ = lua_script(
    """
local now = now_ms()
local e = redis.call('HMGET', KEYS[1], 'v', 'ct', 'etag', 'at', 'soft', 'd', 'neg', 'u', 'st', 'sie')
local decision
local soft = tonumber(e[5])
if not soft then
  decision = 'MISS'
elseif now >= soft then
  if ARGV[4] == '1' then decision = 'STALE' else decision = 'MISS' end
else
  decision = 'HIT'
  local beta = tonumber(ARGV[1])
  local d = tonumber(e[6]) or 0
  if beta > 0 and d > 0 then
    local u = tonumber(e[8]) or 1
    if u < 1e-300 then u = 1e-300 end
    if u > 1 then u = 1 end
    if now - d * beta * math.log(u) >= soft then decision = 'EARLY' end
  end
end
local won, lease_state, lease_pttl, cd = 0, '', -2, ''
if decision ~= 'HIT' and ARGV[5] == '1' then
  local holder = redis.call('GET', KEYS[2])
  local queued = redis.call('GET', KEYS[3])
  if is_cooldown(holder) then
    lease_state = 'cooldown'
    lease_pttl = redis.call('PTTL', KEYS[2])
    cd = cooldown_code(holder)
  elseif is_waiting(queued) then
    lease_state = 'queued'
    lease_pttl = redis.call('PTTL', KEYS[2])
  elseif not holder then
    local taken = redis.pcall('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
    if type(taken) == 'table' and taken.err then
      if string.sub(taken.err, 1, 3) ~= 'OOM' then return taken end
      lease_state = 'out_of_memory'
    else
      won = 1
      redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[6])
    end
  else
    lease_state = 'held'
    lease_pttl = redis.call('PTTL', KEYS[2])
  end
end
return {decision, won, now, e[1] or false, e[2] or false, e[3] or false, e[4] or false,
        e[5] or false, e[6] or false, e[7] or false, lease_state, lease_pttl, e[8] or false, e[9] or false, cd,
        e[10] or false}
"""
)

# FENCED_WRITE: store a refreshed value only while its writer still holds the key's lease, and
# only if its origin call started after the stored value's, after any hard purge (tombstone) and
# after any soft purge (field sp). Releases the lease either way.
# Holding the lease is what makes a purge final: a purge deletes the lease, so a refresh that was
# running when it happened can never write, however long its origin call took. The start-time
# checks make a refresher paused past its lease harmless as well.
# Three modes, all behind the same fences:
#   store       the origin sent a value: store it (a fresh XFetch draw, d measured).
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
# validated_at_ms (the at of the revalidated entry), channel (the ready channel), message (its
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
local prev = redis.call('HMGET', KEYS[1], 'at', 'd', 'sp', 'v', 'ct', 'etag', 'oetag', 'olm', 'neg')
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
local d = measured
local pd = tonumber(prev[2])
if pd and pd > 0 then d = (pd + measured) / 2 end
local soft_ttl = tonumber(a.soft_ttl_ms)
local soft = now + soft_ttl
local v, ct, etag, status = a.value, a.content_type, a.etag, 'written'
local oetag, olm = a.origin_etag, a.origin_last_modified
if mode == 'revalidate' then
  v, ct, etag, status = prev[4], prev[5], prev[6], 'revalidated'
  if oetag == '' then oetag = prev[7] or '' end
  if olm == '' then olm = prev[8] or '' end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', v, 'ct', ct, 'etag', etag, 'at', started,
           'soft', soft, 'd', tostring(d), 'neg', a.negative, 'fails', 0, 'u', a.u,
           'oetag', oetag, 'olm', olm, 'ttl', a.soft_ttl_ms, 'st', a.stale_ms, 'sie', a.stale_if_error_ms)
redis.call('PEXPIRE', KEYS[1], soft_ttl + tonumber(a.stale_ms))
redis.call('DEL', KEYS[2])
publish(false)
return {status, tostring(d), soft, now}
""",
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
    channel: str
    message: str
    hand_over: str


# PLAIN_WRITE: classic cache-aside store, no fencing (the naive strategy's baseline).
# KEYS[1] entry; ARGV by name (PlainWriteArgs): value, content_type, etag, started_ms,
# soft_ttl_ms, negative. Returns soft.
PLAIN_WRITE = lua_script(
    """
local a = named_args()
local soft = now_ms() + tonumber(a.soft_ttl_ms)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', a.value, 'ct', a.content_type, 'etag', a.etag, 'at', a.started_ms,
           'soft', soft, 'd', 0, 'neg', a.negative, 'fails', 0)
redis.call('PEXPIRE', KEYS[1], tonumber(a.soft_ttl_ms))
return soft
""",
    refused_at_maxmemory=True,
)


@dataclass(frozen=True)
class PlainWriteArgs(LuaArgs):
    value: bytes
    content_type: str
    etag: str
    started_ms: int
    soft_ttl_ms: int
    negative: bool


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


# TAKE_LEASE: the lease outside a read (manual refresh); like READ, refused while a refresh is queued.
# KEYS[1] lease, KEYS[2] queued marker; ARGV[1] token, ARGV[2] lease ttl ms, ARGV[3] marker ttl ms.
# Returns 1 if taken (and the marker set), 0 otherwise.
TAKE_LEASE = lua_script(
    """
local queued = redis.call('GET', KEYS[2])
if is_waiting(queued) then return 0 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 1
""",
    refused_at_maxmemory=True,
)

# WARM: one key of a warm-up. What a read that is not a HIT does to the lease, without the read
# (the same checks as READ, in the same order): a key holding a fresh value (positive or cached
# 404) is left alone; otherwise the free lease is taken and the queued marker set exactly as by
# a read that wins, so a warm-up and the reads of the same moment enqueue one refresh per key.
# KEYS[1] entry, KEYS[2] lease, KEYS[3] queued marker
# ARGV[1] token, ARGV[2] lease ttl ms, ARGV[3] queued marker ttl ms
# Returns {state, now}: state "fresh" (stored and before soft), "won" (the caller must enqueue),
#   "queued" (a refresh task for the key waits in the queue), "held" (a refresh runs) or
#   "cooldown" (the last refresh failed and the key backs off)
WARM = lua_script(
    """
local now = now_ms()
local soft = tonumber(redis.call('HGET', KEYS[1], 'soft'))
if soft and now < soft then return {'fresh', now} end
local holder = redis.call('GET', KEYS[2])
local queued = redis.call('GET', KEYS[3])
if is_cooldown(holder) then return {'cooldown', now} end
if is_waiting(queued) then return {'queued', now} end
if holder then return {'held', now} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
return {'won', now}
""",
    refused_at_maxmemory=True,
)

# CLAIM: a worker starts a refresh task. Turn the lease into this run's own: the lease value
# becomes the run token, unique to this execution. A redelivered copy of the same message carries
# the same task token but can never match a run token, so it can neither claim, renew, write nor
# release a lease that the first run still holds. The queued marker becomes the running marker
# "r:<task token>": the message is the worker's now, but stays unacknowledged until FINISH.
# The lease is this task's if it still holds the task token, or if it is free while the queued
# marker is this task's (a purge deleted the lease of a queued refresh: the refresh will start
# after the purge, so it may run; or the message came back after its run died, and no read has
# taken over since).
# KEYS[1] lease, KEYS[2] queued marker; ARGV[1] task token, ARGV[2] run token, ARGV[3] lease ttl ms,
# ARGV[4] marker ttl ms. Returns 1 if the lease is now this run's, else 0.
CLAIM = lua_script(
    """
local lease = redis.call('GET', KEYS[1])
local queued = redis.call('GET', KEYS[2])
local mine = queued == ARGV[1] or queued == running_value(ARGV[1])
if lease == ARGV[1] or (not lease and mine) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], running_value(ARGV[1]), 'PX', ARGV[4])
  return 1
end
return 0
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

# MARK_QUEUED: this task's message goes back to the queue (its worker stops with the task
# running: requeued when a pool process dies, restored when the broker connection closes), so
# its running marker becomes a waiting one again: no read enqueues a second refresh meanwhile,
# however long the lease of the interrupted run has run out. If a read already took over (the
# marker names another task) nothing changes.
# KEYS[1] queued marker; ARGV[1] task token, ARGV[2] marker ttl ms. Returns 1 if marked.
MARK_QUEUED = lua_script(
    """
local queued = redis.call('GET', KEYS[1])
if queued and queued ~= running_value(ARGV[1]) and queued ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
""",
    refused_at_maxmemory=True,
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

# PURGE: hard delete. Deleting the lease is what stops a running refresh from writing the old
# value back (writes need the lease); the tombstone additionally fences any write whose origin
# call started before now. The queued marker stays: a refresh still waiting in the queue will
# start after the purge and may re-take the free lease (CLAIM), so the queue keeps at most one
# refresh per key.
# KEYS[1] entry, KEYS[2] lease, KEYS[3] tombstone; ARGV[1] tombstone ttl ms.
# Returns 1 if a value was stored.
PURGE = lua_script(
    """
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], now_ms(), 'PX', ARGV[1])
return existed
"""
)

# SOFT_PURGE: mark the value stale now, so the next read serves it and refreshes; fence every
# refresh whose origin call started before now (field sp) and free the lease, so the next read
# enqueues a refresh that starts after the purge.
# KEYS[1] entry, KEYS[2] lease. Returns 1 if a value was stored.
SOFT_PURGE = lua_script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local now = now_ms()
redis.call('HSET', KEYS[1], 'soft', now - 1, 'sp', now)
local holder = redis.call('GET', KEYS[2])
if holder and not is_cooldown(holder) then redis.call('DEL', KEYS[2]) end
return 1
""",
    refused_at_maxmemory=True,
)

# INSPECT: everything stored for one key, for the admin's GET .../<key>/meta. Writes nothing and
# never touches the lease: reading a key's state must not change it.
# KEYS[1] entry, KEYS[2] lease, KEYS[3] queued marker
# Returns {now, exists, soft, at, d, u, neg, etag, size, fails, sp, entry_pttl, lease, lease_pttl,
#   queued, queued_pttl} (decoded by name in shared/store.py: INSPECT_FIELDS)
#   exists: 1 when the entry hash is stored; size: bytes of the stored value (HSTRLEN v)
#   lease: the lease's value ("cd:..." while it serves as a failure cooldown) or false
#   queued: the queued marker ("r:..." while a worker runs the refresh) or false
#   *_pttl: PTTL of that key (-2 when absent, -1 without expiry)
INSPECT = lua_script(
    """
local now = now_ms()
local e = redis.call('HMGET', KEYS[1], 'soft', 'at', 'd', 'u', 'neg', 'etag', 'fails', 'sp')
return {now, redis.call('EXISTS', KEYS[1]), e[1] or false, e[2] or false, e[3] or false, e[4] or false,
        e[5] or false, e[6] or false, redis.call('HSTRLEN', KEYS[1], 'v'), e[7] or false, e[8] or false,
        redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2]) or false, redis.call('PTTL', KEYS[2]),
        redis.call('GET', KEYS[3]) or false, redis.call('PTTL', KEYS[3])}
"""
)
