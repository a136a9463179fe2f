"""The read decision in pure Python: HIT, EARLY (XFetch), STALE or MISS.

An entry carries ``soft`` (fresh until, ms on the Redis clock) and ``d`` (how long a refresh
takes, ms). A read at ``now`` is:

- MISS when there is no entry, or when it is past ``soft`` and the strategy does not serve
  stale values;
- STALE when it is past ``soft`` and the strategy serves stale values;
- EARLY when it is still fresh but the XFetch test ``now - d * beta * ln(u) >= soft`` passes:
  the closer to expiry and the slower the refresh, the likelier an early refresh;
- HIT otherwise.

``u`` is uniform in (0, 1]; ln(u) <= 0, so the test only ever moves ``now`` forward. It is
drawn once per stored value (by the writer) rather than once per read: with a draw per read a
key read r times a second refreshes about d*beta*ln(r*d*beta) before expiry, so the hotter the
key the earlier (and more often) it would be recomputed. With one draw per value the expected
head start is d*beta whatever the traffic, and the lease still lets only one read enqueue.

The Lua read script (shared/scripts.py) applies exactly this rule atomically; a test checks
that they agree.
"""

from __future__ import annotations

import math
import random

from shared.protocol import Decision

# Smallest u the rule accepts: u = 0 would be ln(0) = -inf; clamp instead of crashing.
MIN_U = 1e-300


def draw_u(rng: random.Random | None = None) -> float:
    """Uniform in (0, 1]: never 0, so ln(u) is always finite."""
    return 1.0 - (rng or random).random()


def xfetch_should_refresh(now_ms: float, soft_ms: float, delta_ms: float, beta: float, u: float) -> bool:
    """True when a still-fresh entry should be refreshed early."""
    if beta <= 0 or delta_ms <= 0:
        return False
    u = min(max(u, MIN_U), 1.0)
    return now_ms - delta_ms * beta * math.log(u) >= soft_ms


def decide(
    now_ms: float,
    soft_ms: float | None,
    delta_ms: float,
    beta: float,
    u: float,
    serves_stale: bool,
) -> Decision:
    """Classify one read. ``soft_ms`` is None when no entry is stored."""
    if soft_ms is None:
        return Decision.MISS
    if now_ms >= soft_ms:
        return Decision.STALE if serves_stale else Decision.MISS
    if xfetch_should_refresh(now_ms, soft_ms, delta_ms, beta, u):
        return Decision.EARLY
    return Decision.HIT


def smooth_delta(previous_ms: float | None, measured_ms: float) -> float:
    """Refresh duration for XFetch: an even blend of the last measurement and the history."""
    if previous_ms is None or previous_ms <= 0:
        return measured_ms
    return (previous_ms + measured_ms) / 2.0


def may_write(started_ms: int, stored_at_ms: int | None, tombstone_ms: int | None) -> bool:
    """The fencing rule: a refresh lands only if its origin call started after the stored
    value's call and after any hard purge."""
    if tombstone_ms is not None and started_ms <= tombstone_ms:
        return False
    return stored_at_ms is None or started_ms > stored_at_ms


def may_revalidate(started_ms: int, stored_at_ms: int | None, validated_at_ms: int, tombstone_ms: int | None) -> bool:
    """The fencing rule of a 304: the fenced-write rule, and the stored value must still be the
    one whose validator was sent (its call started at `validated_at_ms`). A 304 vouches for those
    bytes only, so it can never lengthen the life of a value that replaced them."""
    return (
        stored_at_ms is not None
        and stored_at_ms == validated_at_ms
        and may_write(started_ms, stored_at_ms, tombstone_ms)
    )
