"""GroupIndex: groups (tags, namespaces) in Redis: enlist a value's key before its write, mark a purge, walk a group.

Every value is a member of its namespace's group and of one group per tag it carries
(shared/tags.py). A group's index is a sorted set whose score is the longest its member's value
may live (fresh life, stale window and stale-if-error: what RECORD_FAILURE may stretch it to),
so the index never outlives the values it names: each enlist trims members whose lives are over
and the index key expires with its longest-lived member.

The fence of a group purge across Redis Cluster slots (a group's members live in many):
1. the purge records the group's moment (MARK), then walks the members (ZSCAN, in bounded
   batches) and purges each (PURGE_MEMBER: hard or soft as the per-key purge, and the lease of
   any refresh in flight deleted);
2. a writer, once the origin answered and its value's tags are known, enlists the key in each
   of its groups and reads their moments in the same step (ENLIST), *then* writes; its fenced
   write refuses a value whose origin call started at or before any of those moments.
In the group's slot ENLIST runs before or after MARK. Before: the member is there before the
walk begins, ZSCAN returns every member present for the whole scan, and the key's purge
deletes the lease (and leaves a tombstone or ``sp``), which the write needs. After: the writer
sees the moment. So a value fetched before a purge never survives it, for a key whose first
value is being fetched as much as for a stored one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from shared import group_scripts
from shared.keys import GroupKeys, Keyspace
from shared.pipeline import evalsha_each
from shared.replies import decode_text
from shared.tags import member, parse_member

# Members a ZSCAN step asks for and keys one purge pipeline carries: each command runs in
# microseconds, one pipeline's bytes fit the reads Redis makes between other clients, and the
# web process that runs the purge builds and parses one batch in a few ms of CPU between yields
# (at 250 on a loaded 2-core machine its event loop ran a second late: its reads were refused).
WALK_BATCH = 100
# Expired members one enlist trims at most: more than it adds, so expired members cannot pile up.
TRIM_PER_ENLIST = 16


class GroupIndex:
    """Groups' indexes and purge moments in one Redis (or Cluster). Thread-safe; share one per process."""

    def __init__(self, client: Any, keys: Keyspace) -> None:
        self.redis = client
        self.keys = keys
        self._enlist = client.register_script(group_scripts.ENLIST)
        self._mark = client.register_script(group_scripts.MARK)
        self._purge_member = client.register_script(group_scripts.PURGE_MEMBER)

    def groups_of(self, namespace: str, tags: Iterable[str]) -> list[GroupKeys]:
        return [self.keys.namespace_group(namespace), *(self.keys.tag_group(tag) for tag in tags)]

    def enlist(self, namespace: str, key: str, tags: Sequence[str], life_ms: int) -> int:
        """Keep (namespace, key) in its groups for `life_ms` from now; returns the latest purge
        moment of those groups (Redis ms, 0 for none): a value whose origin call started at or
        before it must not be written. One round trip per Redis node."""
        name = member(namespace, key)
        args = [name, max(1, life_ms), TRIM_PER_ENLIST]
        calls = [([g.members, g.moment], args) for g in self.groups_of(namespace, tags)]
        return max((int(reply) for reply in run_each(self.redis, self._enlist, calls)), default=0)

    def mark(self, group: GroupKeys, remember_ms: int) -> tuple[int, int]:
        """Record a purge of `group` now: (its moment, the members its index holds)."""
        moment, size = self._mark(keys=[group.moment, group.members], args=[remember_ms])
        return int(moment), int(size)

    def walk(self, group: GroupKeys, since_ms: int) -> Iterator[list[tuple[str, str]]]:
        """The group's members whose values may live past `since_ms`, WALK_BATCH at a time
        (ZSCAN: every member present for the whole walk is returned, maybe more than once)."""
        cursor: Any = 0
        while True:
            cursor, found = self.redis.zscan(group.members, cursor, count=WALK_BATCH)
            batch = []
            for raw, score in found:
                parsed = parse_member(decode_text(raw))
                if parsed is not None and score > since_ms:
                    batch.append(parsed)
            if batch:
                yield batch
            if int(cursor) == 0:
                return

    def purge_members(self, members: list[tuple[str, str]], *, soft: bool, tag: str, tomb_ms: int) -> list[str]:
        """PURGE_MEMBER each (namespace, key), pipelined: one outcome each (hard, soft, fenced, kept)."""
        calls = []
        for namespace, key in members:
            k = self.keys.entry(namespace, key)
            calls.append(([k.entry, k.lease, k.tombstone], ["1" if soft else "0", tag, tomb_ms]))
        return [decode_text(reply) for reply in run_each(self.redis, self._purge_member, calls)]


def run_each(client: Any, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
    """EVALSHA `script` once per call in one pipeline without a transaction (shared/pipeline.py
    evalsha_each: each node its calls, only the calls a node refused with NOSCRIPT run again). A
    single call goes through the script object, which loads on its own."""
    if len(calls) == 1:
        keys, args = calls[0]
        return [script(keys=keys, args=args)]
    return evalsha_each(client, script, calls)
