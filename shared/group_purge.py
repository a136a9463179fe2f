"""GroupPurge (admin, web tier): purge every value carrying any of some tags, or every value of a namespace.

Hard or soft exactly as the per-key purge (shared/readpath.py), key by key: a hard purge deletes
the value and its lease and leaves a tombstone; a soft one marks the value stale (``sp``) and
frees its lease, so the next read serves it stale and refreshes it once. The fence across Redis
Cluster slots is shared/groups.py's: every group's moment is recorded before any member is
visited, and a writer reads the moments of its groups when it enlists, before it writes.

The walk goes WALK_BATCH members at a time (one ZSCAN step, one pipeline of PURGE_MEMBER calls,
each a few microseconds of Redis), so a purge of 100 000 keys never holds Redis for long at a
time. After each batch is purged in Redis, its keys' invalidation is published (a namespace
purge sends one for the whole namespace at the end); the purge answers once every web process
confirmed every message (PURGE_ACK_SECONDS at most after the last), so no near-cache serves a
purged value after the answer.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared import metrics
from shared.channels import PURGE_ACK_SECONDS, InvalidationRound
from shared.keys import GroupKeys
from shared.namespaces import Namespace
from shared.nearcache import NearCache, NoNearCache
from shared.store import CacheStore

log = logging.getLogger("herdless.purge")

# Outcomes of PURGE_MEMBER (shared/group_scripts.py), in the order the answer lists them.
OUTCOMES = metrics.GROUP_PURGE_OUTCOMES
# How long a group's purge moment is remembered past the longest refresh that may have started
# before it (its origin call's deadline, then a lease to write in).
MOMENT_MARGIN_MS = 60_000


@dataclass
class PurgeReport:
    """What a group purge did: keys by outcome, members visited, web processes told/confirmed."""

    soft: bool
    keys: Counter[str] = field(default_factory=Counter)
    members: int = 0
    told: int = 0
    confirmed: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "soft": self.soft,
            "purged": self.keys["hard"] + self.keys["soft"],
            "keys": {outcome: self.keys[outcome] for outcome in OUTCOMES},
            "members_visited": self.members,
            "web_processes": {"told": self.told, "confirmed": self.confirmed},
        }


class GroupPurge:
    """One per web process (cheap: it holds references only)."""

    def __init__(
        self,
        store: CacheStore,
        near_cache: NearCache[Any] | NoNearCache[Any],
        namespaces: dict[str, Namespace],
    ) -> None:
        self.store = store
        self.index = store.groups
        self.near_cache = near_cache
        self.namespaces = namespaces

    @property
    def remember_ms(self) -> int:
        longest_call = max((ns.origin_timeout_seconds for ns in self.namespaces.values()), default=0.0)
        return int(longest_call * 1000) + 2 * self.store.lease_ttl_ms + MOMENT_MARGIN_MS

    def purge_tags(self, tags: list[str], *, soft: bool) -> PurgeReport:
        """Purge every value carrying any of `tags`, in every namespace."""
        groups = [(tag, self.index.keys.tag_group(tag)) for tag in dict.fromkeys(tags)]
        return self._purge(groups, soft=soft, kind="tag", namespace=None)

    def purge_namespace(self, ns: Namespace, *, soft: bool) -> PurgeReport:
        """Purge every value of `ns`."""
        return self._purge([("", self.index.keys.namespace_group(ns.name))], soft=soft, kind="namespace", namespace=ns)

    def _purge(
        self, groups: list[tuple[str, GroupKeys]], *, soft: bool, kind: str, namespace: Namespace | None
    ) -> PurgeReport:
        report = PurgeReport(soft)
        remember = self.remember_ms
        # Every moment first: a writer enlisting after this sees it, whichever group it is in.
        marks = [(tag, group, *self.index.mark(group, remember)) for tag, group in groups]
        remaining = sum(size for *_, size in marks)  # progress: members left to visit (about)
        metrics.GROUP_PURGE_PENDING.inc(remaining)
        invalidations = InvalidationRound(self.store.redis, self.store.keys)
        done: set[tuple[str, str]] = set()  # purged under an earlier tag: not again
        try:
            for tag, group, moment, _ in marks:
                for batch in self.index.walk(group, moment):
                    todo = [m for m in batch if m not in done]
                    time.sleep(0)
                    outcomes = self._purge_batch(todo, soft=soft, tag=tag, kind=kind, report=report)
                    time.sleep(0)
                    done.update(t for t, o in zip(todo, outcomes, strict=True) if o in ("hard", "soft"))
                    report.members += len(batch)
                    step = min(len(batch), remaining)
                    remaining -= step
                    metrics.GROUP_PURGE_PENDING.dec(step)
                    if namespace is None:
                        self._invalidate(invalidations, [t for t, o in zip(todo, outcomes, strict=True) if o != "kept"])
                    # The purge runs in a web process: let its reads through between batches (gevent).
                    time.sleep(0)
            if namespace is not None:
                self.near_cache.invalidate_namespace(namespace.name)
                invalidations.publish(namespace.name, None)
        finally:
            metrics.GROUP_PURGE_PENDING.dec(remaining)
        report.told, report.confirmed = invalidations.wait(PURGE_ACK_SECONDS)
        if report.confirmed < report.told:
            log.warning("%s purge: %d of %d web processes confirmed in time", kind, report.confirmed, report.told)
        metrics.GROUP_PURGES.labels(kind, "soft" if soft else "hard").inc()
        return report

    def _purge_batch(
        self, todo: list[tuple[str, str]], *, soft: bool, tag: str, kind: str, report: PurgeReport
    ) -> list[str]:
        if not todo:
            return []
        outcomes = self.index.purge_members(todo, soft=soft, tag=tag, tomb_ms=self.store.lease_ttl_ms)
        for outcome in outcomes:
            report.keys[outcome] += 1
            metrics.GROUP_PURGE_KEYS.labels(kind, outcome).inc()
        return outcomes

    def _invalidate(self, invalidations: InvalidationRound, targets: Iterable[tuple[str, str]]) -> None:
        by_namespace: dict[str, list[str]] = {}
        for ns, key in targets:
            self.near_cache.invalidate(ns, key)  # also when this process's subscription is down
            by_namespace.setdefault(ns, []).append(key)
        for ns, keys in by_namespace.items():
            invalidations.publish(ns, keys)
