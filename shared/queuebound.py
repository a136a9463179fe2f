"""The refresh queue's bound: one waiting message per key however long workers are away, MAX_QUEUED_REFRESHES in all.

A key's queued marker (shared/scripts.py) keeps reads of the key from enqueueing while its
message waits, but it lapses (QUEUED_MARKER_SECONDS), so that a message the broker lost cannot
block its key forever. With no worker consuming, the message is still there when the marker
lapses: on its own the marker let a second message in (two messages for one key, one more per
marker lifetime). So every message is also entered in one registry of waiting messages, a sorted
set (member ``<namespace>:<key>``, score: the Redis ms it was enqueued) beside a hash of their
task tokens, from the moment its sender is admitted (``ADMIT``) until a worker takes it off the
queue, drops it as expired or its sender gives it back (``DEPART``):

- a sender whose key's message still waits sends nothing: the key's marker is given back to the
  waiting message (``COALESCE``) and the read goes on as one that found a refresh queued;
- a sender that finds MAX_QUEUED_REFRESHES messages waiting sends nothing either: a cold read
  answers 503 ``queue_full`` at once, a stale or early read is served without a refresh.

A registry entry cannot leak: an entry whose message the broker lost is trimmed by score once
workers have been consuming for a whole marker lifetime after it was enqueued and never took it.
"Consuming" is a moment every worker's main process sets in Redis (``CONSUMING``) every
CONSUMING_BEAT_SECONDS and whenever it takes a message. While no worker consumes, nothing is
trimmed, which is what holds the queue to one message per key however long they are away.

The registry is three keys of their own, each script touching only them, so on Redis Cluster
they live on one node and a per-key script never has to reach them (one extra round trip for the
read that won a lease; no read that stays a HIT, EARLY or STALE without a lease pays it).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import OutOfMemoryError

from shared import metrics
from shared.admitbatch import Admission, AdmissionBatcher, ManyMessageFor
from shared.namespaces import Namespace
from shared.pipeline import ScriptCall
from shared.protocol import AdmitState, SuppressReason, lua_script
from shared.replies import decode_text
from shared.settings import Settings
from shared.store import CacheStore
from shared.tasks import MessageFor, RefreshRequest, queued_marker_ttl_seconds

CONSUMING_BEAT_SECONDS = 5.0
# An early refresh (of a value still fresh) is sent only while fewer messages than this wait: past
# it the refresh tier is behind, and a refresh nobody needs yet would take a worker from the cold
# misses and stale values queued before it -- and, since an early refresh's duration counts its
# queue wait, make the next early refresh come earlier still (under overload the origin saw ~1.8x
# the calls of an ideal cache). The value is served as fresh, and refreshed when it goes stale.
EARLY_MAX_WAITING = 32
# Entries trimmed per ADMIT at most: bounds one script's run time (Lua's unpack limit is 8 000).
TRIM_BATCH = 500

# ADMIT: may a refresh of this key be enqueued? Trims the entries of lost messages first.
# KEYS[1] waiting (sorted set), KEYS[2] tokens (hash), KEYS[3] consuming
# ARGV[1] member, ARGV[2] task token, ARGV[3] MAX_QUEUED_REFRESHES, ARGV[4] marker lifetime ms,
# ARGV[5] "1" to enter the message whatever the bound (a message going back to the queue),
# ARGV[6] the most lost entries to trim in this call.
# Optional (the web tier, when the broker is this very Redis and not a Cluster:
# shared/taskmessage.py): KEYS[4] the broker list of the refresh's priority and ARGV[7] the
# refresh's message, pushed there once admitted, so admission and send are one round trip.
# Returns {state, token}: state an AdmitState; token the waiting message's task token ("queued"),
# ARGV[2] ("admitted") or "" ("full").
ADMIT = lua_script(
    """
local now = now_ms()
trim_lost(KEYS[1], KEYS[2], KEYS[3], now, tonumber(ARGV[4]), ARGV[6])
local force = ARGV[5] == '1'
local waiting = redis.call('HGET', KEYS[2], ARGV[1])
if waiting and redis.call('ZSCORE', KEYS[1], ARGV[1]) and not force then return {'queued', waiting} end
if not force and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return {'full', ''} end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if KEYS[4] then redis.call('LPUSH', KEYS[4], ARGV[7]) end
return {'admitted', ARGV[2]}
""",
    refused_at_maxmemory=True,
)

# DEPART: the message enqueued with this token left the queue (a worker took it, dropped it as
# expired, or its sender could not send it): remove its entry, unless it is another message's.
# KEYS[1] waiting, KEYS[2] tokens, KEYS[3] consuming; ARGV[1] member, ARGV[2] task token,
# ARGV[3] "1" when a worker took it (it is consuming now). Returns 1 if the entry was removed.
DEPART = lua_script(
    """
local removed = 0
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  removed = redis.call('ZREM', KEYS[1], ARGV[1])
end
-- At maxmemory the moment is not stored (pcall): the departure itself must still count.
if ARGV[3] == '1' then redis.pcall('SET', KEYS[3], now_ms()) end
return removed
"""
)

# CONSUMING: a worker is connected and taking messages as of now. KEYS[1] consuming. Returns now.
CONSUMING = lua_script(
    """
local now = now_ms()
redis.pcall('SET', KEYS[1], now)
return now
"""
)

# COALESCE: a read won the key's lease, but the key's message still waits in the queue (its
# marker had lapsed): give the lease back and hand the marker back to the waiting message, so it
# can claim the lease when a worker takes it (CLAIM) and other reads keep off meanwhile.
# KEYS[1] lease, KEYS[2] queued marker; ARGV[1] the read's token, ARGV[2] the waiting message's
# task token, ARGV[3] marker ttl ms. Returns 1 if the marker is the waiting message's again.
COALESCE = lua_script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local queued = redis.call('GET', KEYS[2])
if queued and queued ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
""",
    refused_at_maxmemory=True,
)


@dataclass(frozen=True)
class QueueAdmission:
    """ADMIT's answer."""

    state: AdmitState
    waiting_token: str  # the task token of the key's waiting message ("queued")


def member(namespace: str, key: str) -> str:
    # A namespace never holds ":" (NAMESPACE_RE), so the first one ends it.
    return f"{namespace}:{key}"


class QueueBound:
    """The registry of waiting refresh messages on one Redis (or Cluster). Thread-safe."""

    def __init__(self, store: CacheStore, settings: Settings) -> None:
        self.store = store
        self.redis = client = store.redis
        self.keys = store.keys
        self.max_waiting = settings.max_queued_refreshes
        self.marker_ttl_ms = int(queued_marker_ttl_seconds(settings) * 1000)
        self._admit = client.register_script(ADMIT)
        # Set when the broker is this Redis (not a Cluster): the refresh's (broker list, message),
        # which ADMIT pushes itself (web/app.py; shared/taskmessage.py builds it).
        self.message_for: MessageFor | None = None
        # Set with message_for when REFRESH_BATCH_MAX > 1: concurrent admissions share a message.
        self.batcher: AdmissionBatcher | None = None
        self._depart = client.register_script(DEPART)
        self._consuming = client.register_script(CONSUMING)
        self._coalesce = client.register_script(COALESCE)

    def _keys(self) -> list[str]:
        return [self.keys.queue_waiting, self.keys.queue_tokens, self.keys.queue_consuming]

    def admit(
        self,
        namespace: str,
        key: str,
        token: str,
        *,
        force: bool = False,
        bound: int | None = None,
        push: tuple[str, str] | None = None,
    ) -> QueueAdmission:
        """`bound`: admit only while fewer than this wait (never more than MAX_QUEUED_REFRESHES).
        push: (broker list, message) to send in the same step once admitted (see ADMIT)."""
        limit = self.max_waiting if bound is None else min(self.max_waiting, bound)
        keys, args = self._keys(), [member(namespace, key), token, limit, self.marker_ttl_ms, int(force), TRIM_BATCH]
        if push is not None:
            keys, args = [*keys, push[0]], [*args, push[1]]
        raw = self._admit(keys=keys, args=args)
        return QueueAdmission(AdmitState(decode_text(raw[0])), decode_text(raw[1]))

    def send_with_admission(self, message_for: MessageFor, build_many: ManyMessageFor | None, max_batch: int) -> None:
        """Let ADMIT push each admitted refresh's message itself (the broker is this very Redis),
        and, with `build_many` and max_batch > 1, combine concurrent admissions into one message
        of up to max_batch keys (shared/admitbatch.py)."""
        self.message_for = message_for
        if build_many is not None and max_batch > 1:
            self.batcher = AdmissionBatcher(
                self.redis, self._keys(), self.marker_ttl_ms, TRIM_BATCH, self._admit_alone, build_many, max_batch
            )

    def _admit_alone(self, item: Admission) -> tuple[AdmitState, str]:
        assert self.message_for is not None
        request = item.request
        push = self.message_for(request)
        admission = self.admit(request.namespace, request.key, request.token, bound=item.limit, push=push)
        return admission.state, admission.waiting_token

    def admit_or_give_back(
        self, ns: Namespace, key: str, token: str, *, bound: int | None = None, request: RefreshRequest | None = None
    ) -> AdmitState:
        """Admit the refresh `token` won; unless admitted, give back what it won (and count why).
        Redis at maxmemory refuses the registry's growth: that refresh is refused as by a full queue.
        request: the refresh, whose message (`message_for`) the admission sends itself (ADMIT)."""
        push = None
        pushes = request is not None and self.message_for is not None and self.sends_with_admission(ns)
        try:
            if pushes and self.batcher is not None:
                assert request is not None
                limit = self.max_waiting if bound is None else min(self.max_waiting, bound)
                state, waiting_token = self.batcher.admit(Admission(member(ns.name, key), limit, request))
                admission = QueueAdmission(state, waiting_token)
            else:
                if pushes:
                    assert request is not None and self.message_for is not None
                    push = self.message_for(request)
                admission = self.admit(ns.name, key, token, bound=bound, push=push)
        except OutOfMemoryError:
            self.store.finish(ns, key, token)
            metrics.REFRESH_SUPPRESSED.labels(ns.name, SuppressReason.OUT_OF_MEMORY).inc()
            return AdmitState.FULL
        if admission.state is AdmitState.QUEUED:
            self.coalesce(ns.name, key, token, admission.waiting_token)
            metrics.REFRESH_SUPPRESSED.labels(ns.name, SuppressReason.COALESCED).inc()
        elif admission.state is AdmitState.FULL:
            self.store.finish(ns, key, token)
            metrics.REFRESH_SUPPRESSED.labels(ns.name, SuppressReason.QUEUE_FULL).inc()
        return admission.state

    def sends_with_admission(self, ns: Namespace) -> bool:
        """Does an admitted refresh of `ns` need no send of its own? (A proxied key's send
        records the request its refresh replays: shared/proxy_read.py.)"""
        return self.message_for is not None and not ns.is_proxy

    def coalesce(self, namespace: str, key: str, token: str, waiting_token: str) -> None:
        """Give the lease `token` won back; the key's marker names its waiting message again."""
        k = self.keys.entry(namespace, key)
        self._coalesce(keys=[k.lease, k.queued], args=[token, waiting_token, self.marker_ttl_ms])

    def depart(self, namespace: str, key: str, token: str, *, taken: bool = False) -> None:
        call = self.depart_call(namespace, key, token, taken=taken)
        call.script(keys=call.keys, args=call.args)

    def depart_call(self, namespace: str, key: str, token: str, *, taken: bool = False) -> ScriptCall:
        """DEPART as a call to pipeline with another (a worker's claim: shared/pipeline.py)."""
        return ScriptCall(self._depart, self._keys(), [member(namespace, key), token, "1" if taken else "0"])

    def consuming(self) -> None:
        self._consuming(keys=[self.keys.queue_consuming])

    def waiting(self) -> int:
        """Messages registered as waiting (lost ones included until trimmed)."""
        return int(self.redis.zcard(self.keys.queue_waiting))
