"""The read decision in pure Python: HIT, EARLY (XFetch), STALE or MISS.

An entry carries ``soft`` (fresh until, ms on the Redis clock), ``d`` (how long a refresh
takes, ms: its smoothed duration plus its spread, see smooth_duration), ``u`` (the value's
XFetch draw) and ``ttl`` (the value's fresh life, ms). A read at ``now`` is:

- MISS when there is no entry, or when it is past ``soft`` and the strategy does not serve
  stale values;
- STALE when it is past ``soft`` and the strategy serves stale values;
- EARLY when it is still fresh but XFetch's test ``now - d * beta * ln(u) >= soft`` passes,
  with the head start ``-d * beta * ln(u)`` bounded by ``MAX_HEAD_START_SHARE`` of the TTL;
- HIT otherwise.

Why this rule (docs/xfetch.md has the sweep that decided it). XFetch's randomness exists to
spread the refreshes of a key where nothing coordinates them; herdless's lease already lets
only one through. What the rule must get right is a head start that covers the refresh's own
duration (and its spread) for keys that are read, so the new value lands before the old one
expires, and no more than that. So:

- ``u`` is drawn once per stored value (the near-cache serves a value until its EARLY moment,
  which is therefore known; past it, until ``soft``, for a key read too rarely for an early
  refresh: shared/nearcache.py), and drawn so that ``-ln(u)`` is 1 +- HEAD_START_JITTER rather than
  exponential: the head start is ``beta * d`` within 20 %, never the long tail (the paper's
  uniform ``u`` gives a head start exponential with mean ``d * beta``: too little a third of the
  time, several times too much another). The jitter only keeps keys filled together from
  refreshing together for ever.
- ``d`` is measured from the read that won the lease to the write (queue wait included),
  smoothed as TCP smooths its round-trip time (RFC 6298): a mean and a mean deviation, each
  moving a quarter of the way to each measurement, and ``d = mean + SPREAD_WEIGHT * deviation``.
- the head start never exceeds ``MAX_HEAD_START_SHARE`` (a quarter) of the value's TTL: on a
  loaded machine a refresh measured at a large part of the TTL would otherwise be refreshed
  again as soon as it is written (each refresh measured slower, the next one earlier still).
  Bounded so, a key costs at most TTL / (TTL - TTL/4) = 1.33 calls per TTL for its head start.

``beta`` (XFETCH_BETA, 2 by default, or the namespace's ``xfetch_beta``) is then the head start
in refresh durations: 1 just covers the refresh; the second duration lets a key read about once
a second still be read inside the window (the early refresh needs a read to start it).

The Lua read script (shared/scripts.py) applies exactly this rule atomically, and the fenced
write (shared/refresh_scripts.py) smooths ``d`` as smooth_duration does; tests check both agree.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

from shared.protocol import Decision

# Smallest u the rule accepts: u = 0 would be ln(0) = -inf; clamp instead of crashing.
MIN_U = 1e-300
# -ln(u) is drawn uniformly in [1 - HEAD_START_JITTER, 1 + HEAD_START_JITTER].
HEAD_START_JITTER = 0.2
# The head start is at most this share of the value's TTL (`ttl`).
MAX_HEAD_START_SHARE = 0.25
# Gains of the smoothed refresh duration and of its mean deviation (RFC 6298's are 1/8 and 1/4;
# a key is measured once per TTL, so the mean follows faster here).
DURATION_GAIN = 0.25
SPREAD_GAIN = 0.25
# d = smoothed duration + SPREAD_WEIGHT * mean deviation.
SPREAD_WEIGHT = 2.0


def draw_u(rng: random.Random | None = None) -> float:
    """One value's XFetch draw: -ln(u) uniform in 1 +- HEAD_START_JITTER, so u is in (0, 1)."""
    v = (rng or random).random()
    return math.exp(-(1.0 + HEAD_START_JITTER * (2.0 * v - 1.0)))


def head_start_ms(delta_ms: float, beta: float, u: float, ttl_ms: float | None) -> float:
    """How long before ``soft`` reads turn EARLY: ``-d * beta * ln(u)``, at most
    MAX_HEAD_START_SHARE of ``ttl_ms`` (unbounded when the value stores no TTL)."""
    if beta <= 0 or delta_ms <= 0:
        return 0.0
    u = min(max(u, MIN_U), 1.0)
    head = -delta_ms * beta * math.log(u)
    if ttl_ms is not None:
        cap = ttl_ms * MAX_HEAD_START_SHARE
        if head > cap:
            head = cap
    return head


def xfetch_should_refresh(
    now_ms: float, soft_ms: float, delta_ms: float, beta: float, u: float, ttl_ms: float | None = None
) -> bool:
    """True when a still-fresh entry should be refreshed early."""
    if beta <= 0 or delta_ms <= 0:
        return False
    return now_ms + head_start_ms(delta_ms, beta, u, ttl_ms) >= soft_ms


def decide(
    now_ms: float,
    soft_ms: float | None,
    delta_ms: float,
    beta: float,
    u: float,
    serves_stale: bool,
    ttl_ms: float | None = None,
) -> Decision:
    """Classify one read. ``soft_ms`` is None when no entry is stored."""
    if soft_ms is None:
        return Decision.MISS
    if now_ms >= soft_ms:
        return Decision.STALE if serves_stale else Decision.MISS
    if xfetch_should_refresh(now_ms, soft_ms, delta_ms, beta, u, ttl_ms):
        return Decision.EARLY
    return Decision.HIT


class RefreshDuration(NamedTuple):
    """A key's refresh duration as stored: the smoothed mean (field dm), its mean deviation
    (field dv) and XFetch's d = mean + SPREAD_WEIGHT * deviation (field d), all ms."""

    mean_ms: float
    spread_ms: float
    delta_ms: float


def smooth_duration(mean_ms: float | None, spread_ms: float | None, measured_ms: float) -> RefreshDuration:
    """Fold one measured refresh into the key's history (none yet: mean_ms None or <= 0). An entry
    stored before the spread was kept has a mean only (spread_ms None: taken as 0)."""
    if mean_ms is None or mean_ms <= 0:
        mean, spread = measured_ms, 0.0
    else:
        error = measured_ms - mean_ms
        mean = mean_ms + DURATION_GAIN * error
        previous = spread_ms or 0.0
        spread = previous + SPREAD_GAIN * (abs(error) - previous)
    return RefreshDuration(mean, spread, mean + SPREAD_WEIGHT * spread)


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
