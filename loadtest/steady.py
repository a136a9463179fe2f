"""Steady-state figures of a run: fresh shares (overall and for hot keys), served age, misses that a
cache should never give, and whether the refresh worker kept up. Pure functions of the records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# X-Cache categories of the report. Our web tier says HIT/EARLY (fresh), STALE, MISS;
# nginx's $upstream_cache_status is mapped onto the same words (see NGINX_X_CACHE).
FRESH = ("HIT", "EARLY")
HOT_KEY_RPS = 10.0  # a key read at least this often per second (on average over the counted period) is hot
QUEUE_BUSY_SHARE = 0.2  # worker saturated if the queue was non-empty in more than this share of samples

# nginx $upstream_cache_status -> our category. UPDATING/STALE answered the cached value while
# (or because) the origin was being asked; MISS/EXPIRED/REVALIDATED/BYPASS waited on the origin.
NGINX_X_CACHE = {
    "HIT": "HIT",
    "UPDATING": "STALE",
    "STALE": "STALE",
    "MISS": "MISS",
    "EXPIRED": "MISS",
    "REVALIDATED": "MISS",
    "BYPASS": "MISS",
}


def fresh_share(x_cache: np.ndarray, fresh_codes: Sequence[int], mask: np.ndarray | None = None) -> float | None:
    """Share of the answers (errors included: they were not fresh either) whose X-Cache is fresh."""
    chosen = x_cache if mask is None else x_cache[mask]
    if len(chosen) == 0:
        return None
    return float(np.count_nonzero(np.isin(chosen, list(fresh_codes))) / len(chosen))


def hot_keys(keys: np.ndarray, counted: np.ndarray, seconds: float, threshold_rps: float = HOT_KEY_RPS) -> np.ndarray:
    """Key ids read at least `threshold_rps` times a second on average over the counted period."""
    if seconds <= 0 or not counted.any():
        return np.zeros(0, dtype=keys.dtype)
    ids, counts = np.unique(keys[counted], return_counts=True)
    return ids[counts / seconds >= threshold_rps]


def served_age_p99(ages: np.ndarray) -> float | None:
    """p99 of the served age in seconds over answers that carried one (NaN or negative = unknown)."""
    known = ages[np.isfinite(ages) & (ages >= 0)]
    if len(known) == 0:
        return None
    return round(float(np.percentile(known, 99)), 3)


def misses_for_served_keys(
    keys: np.ndarray, sent: np.ndarray, done: np.ndarray, ok: np.ndarray, is_miss: np.ndarray
) -> int:
    """MISS answers for requests sent after an earlier answer for the same key had come back OK.

    Once a key was served in this run its value exists (stale at worst), so a MISS means the
    cache lost it or never stored it.
    """
    first_served: dict[int, float] = {}
    for key, t in zip(keys[ok].tolist(), done[ok].tolist(), strict=True):
        if t < first_served.get(key, float("inf")):
            first_served[key] = t
    count = 0
    for key, t in zip(keys[is_miss].tolist(), sent[is_miss].tolist(), strict=True):
        if t > first_served.get(key, float("inf")):
            count += 1
    return count


@dataclass(frozen=True)
class WorkerVerdict:
    saturated: bool | None  # None: no queue or lag figures were readable
    queue_busy_share: float | None  # share of samples with queue depth > 0
    refresh_lag_p99_s: float | None
    reasons: list[str]


def worker_verdict(
    depths: Sequence[float | None],
    refresh_lag_p99_s: float | None,
    ttl: float,
    busy_share_limit: float = QUEUE_BUSY_SHARE,
    lag_p99_bucket: tuple[float, float] | None = None,
) -> WorkerVerdict:
    """Saturated when the queue was non-empty in more than `busy_share_limit` of the samples, or the
    refresh lag p99 exceeded the TTL (values were refreshed later than they expired)."""
    seen = [d for d in depths if d is not None]
    busy = None if not seen else sum(1 for d in seen if d > 0) / len(seen)
    reasons = []
    if busy is not None and busy > busy_share_limit:
        reasons.append(f"queue depth was above 0 in {100 * busy:.0f}% of {len(seen)} samples")
    if refresh_lag_p99_s is not None and refresh_lag_p99_s > ttl:
        where = ""
        if lag_p99_bucket is not None:  # the estimate interpolates inside one histogram bucket
            where = f" (estimated inside the {lag_p99_bucket[0]:g}-{lag_p99_bucket[1]:g}s bucket)"
        reasons.append(f"refresh lag p99 {refresh_lag_p99_s:.2f}s{where} exceeded the TTL {ttl:g}s")
    known = busy is not None or refresh_lag_p99_s is not None
    return WorkerVerdict(bool(reasons) if known else None, busy, refresh_lag_p99_s, reasons)
