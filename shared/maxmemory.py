"""What herdless does when Redis reaches its maxmemory: serve what is stored, refuse what would grow it.

Once used memory passes ``maxmemory`` and Redis can free none (``noeviction``, or ``volatile-lru``
with no key left that has a TTL; docs/operations.md, "Redis memory", says which policy to run and why), it
refuses commands that may grow memory. Then:

- A read still answers: READ's only write is the lease, in a pcall; a refused lease leaves the
  key's lease state ``out_of_memory``. A stale or early value is served without a refresh
  (``herdless_refresh_suppressed_total{reason="out_of_memory"}``); a cold read, which has nothing
  to serve and whose refresh could not be stored, answers 503 ``out_of_memory`` at once.
- Every script that may grow memory carries a ``#!lua`` shebang without ``allow-oom``
  (``lua_script(..., refused_at_maxmemory=True)``), so Redis refuses it whole before it runs:
  a fenced write never stores half a value, nor a value past the limit. Without the shebang Redis
  checks only a script's first write, and FENCED_WRITE's first is the DEL of the entry: the
  HSET after it was let through and wrote past the limit.
- A refresh whose claim or write is refused (``OutOfMemoryError``) ends with
  ``RECORD_REFUSED_WRITE``: the key cools down for one lease with the code ``out_of_memory``
  (cold reads answer 503 with it meanwhile) and its waiters are woken, in one step; the refresh
  counts as ``herdless_refresh_total{outcome="out_of_memory"}``.
"""

from __future__ import annotations

from shared.protocol import lua_script

# RECORD_REFUSED_WRITE: Redis at maxmemory refused this refresh's claim or write. Turn its lease
# into a cooldown (code out_of_memory) and wake the key's cold waiters with "error".
# KEYS[1] lease; ARGV[1] task token, ARGV[2] run token ("" when the claim was refused),
# ARGV[3] cooldown ms, ARGV[4] the cooldown value (cooldown_value(token, "out_of_memory")),
# ARGV[5] the ready channel, ARGV[6] its "error" message for the key.
# No shebang, on purpose: it must run at maxmemory. Its one write that may grow memory, the
# cooldown, takes the place of the lease it deletes first (a key of the same size: no growth),
# and Redis lets a script's commands through after a first write. PUBLISH stores nothing.
# Returns 1 if the lease became the cooldown, 0 if it was not this refresh's.
RECORD_REFUSED_WRITE = lua_script(
    """
local holder = redis.call('GET', KEYS[1])
local ours = holder and (holder == ARGV[1] or (ARGV[2] ~= '' and holder == ARGV[2]))
if ours then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
if ours then return 1 end
return 0
"""
)
