"""The Lua scripts that make every cache decision atomic on Redis, the only clock that counts.

Each script touches only the keys of one entry (one hash tag), so it runs on Redis Cluster.
Entry hash fields: v (value bytes), ct (content type), etag (ours: a hash of v), at (ms: when
the origin call that produced or last revalidated it started), soft (ms: fresh until), d (ms:
XFetch's refresh duration, dm + 2 dv), dm and dv (ms: the smoothed refresh duration and its mean
deviation), u (the XFetch draw in (0,1) for this value), neg ("1"
for a cached origin 404), fails (consecutive refresh failures), oetag and olm (the origin's
ETag and Last-Modified: the validators of a conditional refresh), ttl, st and sie (ms: the
value's fresh life, stale window and stale-if-error extension, which freshness = "origin"
takes from the origin's answer), tg (the value's tags, newline-joined: shared/tags.py).
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

from shared.protocol import LuaArgs, lua_script
from shared.xfetch import MAX_HEAD_START_SHARE

# READ: classify one read and, unless it is a HIT, try to win the refresh lease.
# KEYS[1] entry, KEYS[2] lease, KEYS[3] queued marker
# ARGV[1] beta, ARGV[2] lease ttl ms, ARGV[3] token, ARGV[4] "1" when stale values may be served,
# ARGV[5] "1" to try the lease (0 for naive), ARGV[6] queued marker ttl ms
# The XFetch draw u is the entry's own (field u, drawn once per stored value): with a draw per
# read, a key read r times a second would refresh about d*beta*ln(r*d*beta) early, so hot keys
# would cost the origin more than one call per TTL. The head start -d*beta*ln(u) is at most
# MAX_HEAD_START_SHARE of the value's TTL (field ttl; shared/xfetch.py tells why).
# Returns {decision, won, now, v, ct, etag, at, soft, d, neg, lease_state, lease_pttl, u, st, cd, sie,
#   ttl}
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
local e = redis.call('HMGET', KEYS[1], 'v', 'ct', 'etag', 'at', 'soft', 'd', 'neg', 'u', 'st', 'sie', 'ttl')
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
    local head = -d * beta * math.log(u)
    local ttl = tonumber(e[11])
    if ttl and head > ttl * @MAX_HEAD_START_SHARE@ then head = ttl * @MAX_HEAD_START_SHARE@ end
    if now + head >= soft then decision = 'EARLY' end
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
        e[10] or false, e[11] or false}
""".replace("@MAX_HEAD_START_SHARE@", repr(MAX_HEAD_START_SHARE))
)


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
#   queued, queued_pttl, ttl, dm, dv} (decoded by name in shared/store.py: INSPECT_FIELDS)
#   dm, dv: the refresh duration's smoothed mean and mean deviation (d = dm + 2 dv, shared/xfetch.py)
#   exists: 1 when the entry hash is stored; size: bytes of the stored value (HSTRLEN v)
#   lease: the lease's value ("cd:..." while it serves as a failure cooldown) or false
#   queued: the queued marker ("r:..." while a worker runs the refresh) or false
#   *_pttl: PTTL of that key (-2 when absent, -1 without expiry)
INSPECT = lua_script(
    """
local now = now_ms()
local e = redis.call('HMGET', KEYS[1], 'soft', 'at', 'd', 'u', 'neg', 'etag', 'fails', 'sp', 'ttl', 'dm', 'dv')
return {now, redis.call('EXISTS', KEYS[1]), e[1] or false, e[2] or false, e[3] or false, e[4] or false,
        e[5] or false, e[6] or false, redis.call('HSTRLEN', KEYS[1], 'v'), e[7] or false, e[8] or false,
        redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2]) or false, redis.call('PTTL', KEYS[2]),
        redis.call('GET', KEYS[3]) or false, redis.call('PTTL', KEYS[3]), e[9] or false, e[10] or false,
        e[11] or false}
"""
)
