"""The Lua scripts of groups (tags and namespaces): a group's index of members, its purge moment,
and the purge of one member key.

A group is a tag (``t:<tag>``) or a namespace (``n:<namespace>``). Its two keys share one hash
tag (``<prefix>:g:{t:<tag>}:m`` and ``:p``, shared/keys.py ``GroupKeys``), so ENLIST and MARK
touch one Cluster slot; the members live in many others, so the purge of a member is a script of
its own (PURGE_MEMBER, on the entry's keys). The fence across slots (shared/groups.py):
MARK records the group's moment *before* the purge walks the members, and a writer ENLISTs its
key and reads the moment in one step *before* its fenced write; in the group's slot one of the
two runs first, so either the walk sees the key or the writer sees the moment.
"""

from __future__ import annotations

from shared.protocol import lua_script

# ENLIST: a value of the member key is about to be written: keep the member in the group's index
# until the value's longest possible life is over, trim members whose lives are over, keep the
# index key no longer than its longest-lived member, and answer the group's last purge moment.
# KEYS[1] members (sorted set: member -> the Redis ms its value lives until, at most),
# KEYS[2] the group's purge moment
# ARGV[1] member ("<namespace>\n<key>"), ARGV[2] the value's longest life (ms from now: its
# fresh life, stale window and stale-if-error extension), ARGV[3] most expired members to trim
# Returns the group's last purge moment (Redis ms), 0 when none is remembered.
ENLIST = lua_script(
    """
local now = now_ms()
local until_ms = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'GT', until_ms, ARGV[1])
local over = redis.call('ZRANGE', KEYS[1], '-inf', '(' .. now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
if #over > 0 then redis.call('ZREM', KEYS[1], unpack(over)) end
local expires = redis.call('PEXPIRETIME', KEYS[1])
if expires < until_ms then redis.call('PEXPIREAT', KEYS[1], until_ms) end
return tonumber(redis.call('GET', KEYS[2])) or 0
""",
    refused_at_maxmemory=True,
)

# MARK: a purge of the group begins: record its moment (before any member is visited), for as
# long as a refresh that started before it may still try to write.
# KEYS[1] the group's purge moment, KEYS[2] members; ARGV[1] how long to remember it (ms)
# Returns {moment (Redis ms), members in the index now}
MARK = lua_script(
    """
local now = now_ms()
redis.call('SET', KEYS[1], now, 'PX', tonumber(ARGV[1]))
return {now, redis.call('ZCARD', KEYS[2])}
"""
)

# PURGE_MEMBER: purge one key a group's walk found, hard or soft exactly as the per-key PURGE
# and SOFT_PURGE, and fence whatever refresh of it is in flight (its lease goes): a key whose
# first value is being fetched has a member but no entry yet. A stored value that does not
# carry the tag (the member is left from an older value) is kept, but its refresh in flight is
# fenced: the value it fetched may carry the tag.
# KEYS[1] entry, KEYS[2] lease, KEYS[3] tombstone
# ARGV[1] "1" soft / "0" hard, ARGV[2] the tag ("" for a namespace: every value belongs),
# ARGV[3] tombstone ttl ms
# Returns one of: "hard" (a value deleted), "soft" (a value marked stale), "fenced" (no value of
# the group stored; a refresh in flight, if any, can no longer write), "kept" (the stored value
# does not carry the tag; nothing was in flight)
PURGE_MEMBER = lua_script(
    """
local now = now_ms()
local holder = redis.call('GET', KEYS[2])
local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists and ARGV[2] ~= '' then
  local tags = '\\n' .. (redis.call('HGET', KEYS[1], 'tg') or '') .. '\\n'
  if not string.find(tags, '\\n' .. ARGV[2] .. '\\n', 1, true) then
    if holder and not is_cooldown(holder) then
      redis.call('DEL', KEYS[2])
      return 'fenced'
    end
    return 'kept'
  end
end
if exists and ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'soft', now - 1, 'sp', now)
  if holder and not is_cooldown(holder) then redis.call('DEL', KEYS[2]) end
  return 'soft'
end
redis.call('DEL', KEYS[1])
if ARGV[1] == '0' or (holder and not is_cooldown(holder)) then redis.call('DEL', KEYS[2]) end
redis.call('SET', KEYS[3], now, 'PX', tonumber(ARGV[3]))
if exists then return 'hard' end
return 'fenced'
"""
)
