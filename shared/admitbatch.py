"""Refreshes admitted together: the cold misses a web process admits at once go out as one message.

A refresh costs the worker a Celery message: BRPOP, decode, the task's trace, its ack (py-spy:
about a third of the worker's CPU per refresh was that handling, whatever the refresh did). When
the broker is the cache's own Redis, the queue's admission pushes the refresh's message itself
(ADMIT in shared/queuebound.py). ``AdmissionBatcher`` sits in front of that step in each web
process and combines the refreshes admitted while another admission's round trip is under way:

- one at a time, the first caller runs its admission at once (nothing waits for a batch to
  fill: an idle process pays nothing);
- callers that arrive while a round trip is in flight queue up; when it returns, the first of
  them takes up to ``REFRESH_BATCH_MAX`` of them in one ``ADMIT_MANY`` per namespace and reason,
  which admits each key as ADMIT would (one waiting message per key, MAX_QUEUED_REFRESHES keys
  in all, an early refresh's own bound) and pushes **one** REFRESH_MANY_TASK message with the
  keys it admitted (shared/taskmessage.py builds its parts, the script completes them);
- each key is still its own refresh on the worker (claim, lease, fenced write: workers/tasks.py
  runs them side by side, at most WORKER_CONCURRENCY at once), its own entry in the registry
  and its own queued marker: only the message is shared.

A single admission stays the single-key message (REFRESH_TASK), so nothing changes for a quiet
process. Each caller gets its own key's QueueAdmission (or the round trip's exception).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis

from shared.pipeline import evalsha_each
from shared.protocol import AdmitState, lua_script
from shared.replies import decode_text
from shared.taskmessage import ManyMessage, many_item
from shared.tasks import RefreshRequest

# A new ManyMessage for (namespace, reason): RefreshMessages.build_many.
ManyMessageFor = Callable[[str, str], ManyMessage]

# ADMIT_MANY: ADMIT (shared/queuebound.py) for several keys of one namespace and reason, which
# pushes one message with the keys it admitted.
# KEYS[1] waiting (sorted set), KEYS[2] tokens (hash), KEYS[3] consuming, KEYS[4] broker list.
# ARGV[1] marker lifetime ms, ARGV[2] the most lost entries to trim, ARGV[3] body head, ARGV[4]
# body tail, ARGV[5] shown head, ARGV[6] H, the envelope's holes; then its H + 1 segments and
# its H hole kinds ("b" body, "s" shown: ManyMessage), then five per key: member, task token,
# the bound it is admitted under, its item (JSON), the key.
# Returns {state, token} per key, as ADMIT does.
ADMIT_MANY = lua_script(
    """
local now = now_ms()
trim_lost(KEYS[1], KEYS[2], KEYS[3], now, tonumber(ARGV[1]), ARGV[2])
local holes = tonumber(ARGV[6])
local out, items, keys = {}, {}, {}
local count = redis.call('ZCARD', KEYS[1])
for i = 8 + 2 * holes, #ARGV, 5 do
  local member, token = ARGV[i], ARGV[i + 1]
  local waiting = redis.call('HGET', KEYS[2], member)
  if waiting and redis.call('ZSCORE', KEYS[1], member) then
    out[#out + 1] = 'queued'
    out[#out + 1] = waiting
  elseif count >= tonumber(ARGV[i + 2]) then
    out[#out + 1] = 'full'
    out[#out + 1] = ''
  else
    count = count + redis.call('ZADD', KEYS[1], now, member)
    redis.call('HSET', KEYS[2], member, token)
    items[#items + 1] = ARGV[i + 3]
    keys[#keys + 1] = ARGV[i + 4]
    out[#out + 1] = 'admitted'
    out[#out + 1] = token
  end
end
if #items > 0 then
  local filled = {
    b = cjson.encode(ARGV[3] .. '[' .. table.concat(items, ',') .. ']' .. ARGV[4]),
    s = cjson.encode(ARGV[5] .. cjson.encode(keys)),
  }
  local envelope = {ARGV[7]}
  for h = 1, holes do
    envelope[#envelope + 1] = filled[ARGV[7 + holes + h]]
    envelope[#envelope + 1] = ARGV[7 + h]
  end
  redis.call('LPUSH', KEYS[4], table.concat(envelope))
end
return out
""",
    refused_at_maxmemory=True,
)


class Admission:
    """One refresh waiting to be admitted: the key's registry member, its bound, its refresh."""

    __slots__ = ("member", "limit", "request", "done", "leads", "result", "error")

    def __init__(self, member: str, limit: int, request: RefreshRequest) -> None:
        self.member, self.limit, self.request = member, limit, request
        self.done = threading.Event()
        self.leads = False  # woken to run the next batch rather than with its answer
        self.result: tuple[AdmitState, str] | None = None
        self.error: BaseException | None = None


class AdmissionBatcher:
    """Combines the admissions of one process that arrive while another's round trip runs.

    admit_one: the single-key admission (ADMIT with the key's own message); keys: the registry's
    three keys; build_many: a new ManyMessage for a namespace and reason."""

    def __init__(
        self,
        client: Any,
        registry_keys: list[str],
        marker_ttl_ms: int,
        trim_batch: int,
        admit_one: Callable[[Admission], tuple[AdmitState, str]],
        build_many: ManyMessageFor,
        max_batch: int,
    ) -> None:
        self._client = client
        self._script = client.register_script(ADMIT_MANY)
        self._registry_keys = registry_keys
        self._fixed_args = [marker_ttl_ms, trim_batch]
        self._admit_one, self._build_many = admit_one, build_many
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[Admission] = []
        self._busy = False
        self._in_flight = 0
        self.batches = self.batched = 0  # round trips that admitted several keys; keys they admitted

    def waiting(self) -> int:
        """Admissions under way or queued behind one."""
        with self._lock:
            return self._in_flight + len(self._pending)

    def admit(self, item: Admission) -> tuple[AdmitState, str]:
        """(state, waiting or admitted token) of this key, as ADMIT answers it."""
        with self._lock:
            self._pending.append(item)
            item.leads = not self._busy
            self._busy = True
        if not item.leads:
            try:
                item.done.wait()  # a round trip is bounded by the client's socket timeout
            except BaseException:
                self._abandon(item)  # killed while waiting (GreenletExit): no batch may wait on it
                raise
        if item.leads:
            self._run_next()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _abandon(self, item: Admission) -> None:
        """`item`'s caller stopped waiting: drop it from the queue, and if it was to run the next
        batch, hand that to the admission behind it (or to the next caller)."""
        with self._lock:
            if item not in self._pending:
                return  # in a batch under way: its leader finishes that batch without it
            self._pending.remove(item)
            if not item.leads:
                return
            successor = self._pending[0] if self._pending else None
            self._busy = successor is not None
            if successor is not None:
                successor.leads = True
        if successor is not None:
            successor.done.set()

    def _run_next(self) -> None:
        with self._lock:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._in_flight = len(batch)
        try:
            if len(batch) == 1:
                batch[0].result = self._admit_one(batch[0])
            else:
                self._admit_many(batch)
        except BaseException as exc:  # noqa: BLE001 - each caller raises it (a killed leader's too)
            # A leader killed mid-round trip (GreenletExit) re-raises that itself; the others get
            # what a lost connection gives, which the read path answers as Redis unavailable.
            passed_on = exc if isinstance(exc, Exception) else redis.exceptions.ConnectionError("admission interrupted")
            for item in batch:
                if item.result is None:
                    item.error = exc if item is batch[0] else passed_on
        finally:
            with self._lock:
                self._in_flight = 0
                successor = self._pending[0] if self._pending else None
                self._busy = successor is not None
                if successor is not None:
                    successor.leads = True
            for item in batch[1:]:
                item.done.set()
            if successor is not None:
                successor.done.set()

    def _admit_many(self, batch: list[Admission]) -> None:
        groups: dict[tuple[str, str], list[Admission]] = {}
        for item in batch:
            groups.setdefault((item.request.namespace, str(item.request.reason)), []).append(item)
        calls = []
        for (namespace, reason), items in groups.items():
            parts = self._build_many(namespace, reason)
            args: list[Any] = [*self._fixed_args, parts.body_head, parts.body_tail, parts.shown_head]
            args += [len(parts.holes), *parts.segments, *parts.holes]
            for item in items:
                r = item.request
                args += [item.member, r.token, item.limit, many_item(r), r.key]
            calls.append(([*self._registry_keys, parts.list_key], args))
        replies = evalsha_each(self._client, self._script, calls)
        for items, reply in zip(groups.values(), replies, strict=True):
            for i, item in enumerate(items):
                item.result = (AdmitState(decode_text(reply[2 * i])), decode_text(reply[2 * i + 1]))
        self.batches += 1
        self.batched += len(batch)
