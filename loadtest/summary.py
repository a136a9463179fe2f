"""Turns one run's raw records into the figures a report shows (a JSON-ready dict)."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
from typing import Any

import numpy as np
import psutil
from hdrh.histogram import HdrHistogram

from loadtest.openloop import CLIENT_ERROR_STATUS, DEFAULT_WARMUP_SECONDS, X_CACHE_CODES, RunResult
from loadtest.probes import quantile_bucket
from loadtest.steady import (
    FRESH,
    HOT_KEY_RPS,
    fresh_share,
    hot_keys,
    misses_for_served_keys,
    served_age_p99,
    worker_verdict,
)
from loadtest.workload import distinct_key_windows, ideal_refreshes, origin_calls_per_key_window

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
LATE_SEND_SECONDS = 0.010  # a send later than this past its intended time counts as "behind schedule"
X_CACHE_SHOWN = ("HIT", "EARLY", "STALE", "MISS", "NEGATIVE")


def new_histogram() -> HdrHistogram:
    # microseconds, 1 us .. 1 h, 3 significant digits
    return HdrHistogram(1, 3_600_000_000, 3)


def histogram_of(latencies_s: np.ndarray) -> HdrHistogram:
    hist = new_histogram()
    for us in np.maximum(1, np.rint(latencies_s * 1e6)).astype(np.int64).tolist():
        hist.record_value(us)
    return hist


def percentiles_ms(hist: HdrHistogram) -> dict[str, float | int]:
    if hist.get_total_count() == 0:
        return {"count": 0}
    out: dict[str, float | int] = {"count": hist.get_total_count()}
    for name, pct in PERCENTILES:
        out[name] = round(hist.get_value_at_percentile(pct) / 1000, 3)
    out["max"] = round(hist.get_max_value() / 1000, 3)
    return out


def is_error(status: np.ndarray) -> np.ndarray:
    return ~(((status >= 200) & (status < 300)) | (status == 304))


def machine_description() -> str:
    # psutil has every figure but the CPU's model name, which only /proc/cpuinfo tells on Linux.
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{psutil.cpu_count()} cores ({model}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM,"
        f" {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def warmup_end(offset: Any, latency: Any, keys: Any, ok: Any, ttl: float) -> float:
    """Default warm-up: one TTL, or longer if some key's first value took longer to arrive.

    The first request for a key is a MISS by definition; warm-up lasts until every key of
    the run has been filled once (its first successful answer came back), so "MISS after
    warm-up" counts only misses the cache could have avoided."""
    if not len(offset):
        return ttl
    done = offset + latency
    first_fill: dict[int, float] = {}
    for key, t in zip(keys[ok].tolist(), done[ok].tolist(), strict=True):
        if t < first_fill.get(key, float("inf")):
            first_fill[key] = t
    return round(max(ttl, max(first_fill.values(), default=ttl)), 3)


def summarize(result: RunResult) -> dict[str, Any]:
    cfg = result.config
    rec = result.records
    offset = np.frombuffer(rec.offset, dtype=np.float64) if len(rec) else np.zeros(0)
    latency = np.frombuffer(rec.latency, dtype=np.float64) if len(rec) else np.zeros(0)
    lag = np.frombuffer(rec.lag, dtype=np.float64) if len(rec) else np.zeros(0)
    status = np.frombuffer(rec.status, dtype=np.int16).astype(np.int32) if len(rec) else np.zeros(0, np.int32)
    xcache = np.frombuffer(rec.x_cache, dtype=np.int8) if len(rec) else np.zeros(0, np.int8)
    keys = np.frombuffer(rec.key, dtype=np.int32) if len(rec) else np.zeros(0, np.int32)
    errors = is_error(status)
    ok = ~errors
    warmup_notes: list[str] = []
    if cfg.warmup is not None:
        warm_from = cfg.warmup
    else:
        filled = warmup_end(offset, latency, keys, ok, cfg.ttl)
        warm_from = max(DEFAULT_WARMUP_SECONDS, filled)
        if cfg.scenario != "cold-herd" and warm_from >= 0.75 * cfg.duration:
            warm_from = filled
            warmup_notes.append(
                f"the run is too short for the default {DEFAULT_WARMUP_SECONDS:g}s warm-up: figures after warm-up"
                f" count from {filled:g}s (one TTL, or until every key was filled once)"
            )
    # origin calls are sampled once a second, so the steady-state count starts at a whole second
    warm_from = float(math.ceil(warm_from))
    after_warmup = offset >= warm_from

    hist = histogram_of(latency)
    hist_warm = histogram_of(latency[after_warmup])
    duration = cfg.duration if cfg.scenario != "cold-herd" else max(result.sent_elapsed, 1e-9)
    completed = len(rec)
    late = int(np.count_nonzero(lag > LATE_SEND_SECONDS))
    lag_ms = {
        "p50": round(float(np.percentile(lag, 50)) * 1000, 3) if completed else None,
        "p99": round(float(np.percentile(lag, 99)) * 1000, 3) if completed else None,
        "max": round(float(lag.max()) * 1000, 3) if completed else None,
    }
    kept = completed == result.scheduled and (completed == 0 or late <= 0.01 * completed)
    if cfg.scenario == "cold-herd":
        kept = completed == result.scheduled
    x_counts = {name: int(np.count_nonzero(xcache == code)) for code, name in enumerate(X_CACHE_CODES)}
    x_counts = {("none" if k == "" else k): v for k, v in x_counts.items() if v}
    statuses, status_n = np.unique(status, return_counts=True)
    status_counts = {
        ("no response" if s == CLIENT_ERROR_STATUS else str(int(s))): int(n)
        for s, n in zip(statuses, status_n, strict=True)
    }
    miss_code = X_CACHE_CODES.index("MISS")

    key_windows = distinct_key_windows(zip(keys.tolist(), offset.tolist(), strict=True), cfg.ttl) if completed else 0
    calls_per_window = (
        origin_calls_per_key_window(result.origin_calls, key_windows) if result.origin_calls is not None else None
    )
    queue_seen = [q for q in result.queue_depth_per_second if q is not None]

    summary: dict[str, Any] = {
        "run": {
            "run_id": result.run_id,
            "key_prefix": result.key_prefix,
            "label": cfg.label or cfg.namespace,
            "namespace": cfg.namespace,
            "scenario": cfg.scenario,
            "url": cfg.url,
            "origin_url": cfg.origin_url,
            "started_at": dt.datetime.fromtimestamp(result.started_at, dt.UTC).isoformat(timespec="seconds"),
            "rate": cfg.rate,
            "duration_s": cfg.duration,
            "arrivals": cfg.arrivals,
            "keys": cfg.keys,
            "zipf": cfg.zipf,
            "ttl_s": cfg.ttl,
            "max_age_seen_s": result.max_age_seen,
            "warmup_s": warm_from,
            "clients": cfg.clients if cfg.scenario == "cold-herd" else None,
            "seed": cfg.seed,
            "machine": machine_description(),
        },
        "generator": {
            "scheduled": result.scheduled,
            "completed": completed,
            "offered_rate": round(result.scheduled / duration, 1) if cfg.scenario != "cold-herd" else None,
            "achieved_rate": round(completed / max(duration, result.sent_elapsed), 1)
            if cfg.scenario != "cold-herd"
            else None,
            "last_send_s": round(result.sent_elapsed, 3),
            "send_lag_ms": lag_ms,
            "late_sends": late,
            "late_threshold_ms": LATE_SEND_SECONDS * 1000,
            "kept_schedule": bool(kept),
            "peak_connections": result.peak_connections,
            "connects": result.connects,
            "max_connections": cfg.max_connections,
            "niceness": os.nice(0),
            "waited_for_connection": result.waited_for_connection,
        },
        "latency_ms": percentiles_ms(hist),
        "latency_after_warmup_ms": percentiles_ms(hist_warm),
        "latency_hdr": hist.encode().decode("ascii") if completed else None,
        "x_cache": x_counts,
        "status": status_counts,
        "errors": {
            "total": int(np.count_nonzero(errors)),
            "after_warmup": int(np.count_nonzero(errors & after_warmup)),
            "by_kind": dict(result.error_kinds),
        },
        "miss_after_warmup": int(np.count_nonzero((xcache == miss_code) & after_warmup)),
        "origin": {
            "calls": result.origin_calls,
            "calls_all_keys": result.origin_calls_all_keys,
            "key_windows": key_windows,
            "calls_per_key_window": None if calls_per_window is None else round(calls_per_window, 4),
            "theoretical_min": 1.0,
            "max_in_flight": result.origin_max_in_flight,  # the demo origin's peak since start or its last reset
        },
        "queue_depth_max": max(queue_seen) if queue_seen else None,
        "notes": list(result.notes) + warmup_notes,
    }
    if cfg.scenario == "steady":
        summary["steady"] = steady_state(result, warm_from, offset, latency, keys, ok, xcache)
        lag_bucket = quantile_bucket(0.99, result.refresh_lag_buckets)
        # judge the queue over the counted period only: filling the cold keys queues refreshes by design
        # (sample i was taken at offset i + 1 s)
        depths = result.queue_depth_per_second[int(warm_from) :] or result.queue_depth_per_second
        verdict = worker_verdict(depths, result.refresh_lag_p99_s, cfg.ttl, lag_p99_bucket=lag_bucket)
        summary["worker"] = {
            "saturated": verdict.saturated,
            "queue_busy_share": None if verdict.queue_busy_share is None else round(verdict.queue_busy_share, 3),
            "refresh_lag_p99_s": verdict.refresh_lag_p99_s,
            "refresh_lag_p99_bucket_s": None if lag_bucket is None else [lag_bucket[0], lag_bucket[1]],
            "reasons": verdict.reasons,
        }
        if verdict.saturated:
            summary["notes"].append("the refresh worker was SATURATED: " + "; ".join(verdict.reasons))
    if not kept and cfg.scenario != "cold-herd":
        summary["notes"].append(
            f"the generator fell behind its schedule: {late} of {completed} sends were more than "
            f"{LATE_SEND_SECONDS * 1000:.0f} ms late (max {lag_ms['max']} ms); latencies still"
            f" count from the "
            "intended send time"
        )
    if cfg.scenario == "cold-herd":
        herd_calls = sum(result.origin_per_key.values()) if result.origin_per_key else result.origin_calls
        summary["cold_herd"] = {
            "clients": cfg.clients,
            "key": result.key_names[0] if result.key_names else None,
            "origin_calls": herd_calls,
            "ok": int(np.count_nonzero(ok)),
            "errors": int(np.count_nonzero(errors)),
            "write_spread_ms": lag_ms["max"],
        }
    if cfg.scenario == "outage" and result.outage is not None:
        summary["outage"] = _outage_summary(result, offset, latency, status, keys, errors)
    summary["per_second"] = _per_second(result, offset, latency, errors, xcache)
    return summary


def steady_state(
    result: RunResult,
    warm_from: float,
    offset: np.ndarray,
    latency: np.ndarray,
    keys: np.ndarray,
    ok: np.ndarray,
    xcache: np.ndarray,
) -> dict[str, Any]:
    """The figures of the counted period (after warm-up, origin calls counted after the drain)."""
    cfg = result.config
    counted = offset >= warm_from
    seconds = max(0.0, cfg.duration - warm_from)
    fresh_codes = [X_CACHE_CODES.index(name) for name in FRESH]
    hot = hot_keys(keys, counted, seconds, HOT_KEY_RPS)
    on_hot = counted & np.isin(keys, hot)
    ages = np.frombuffer(result.records.age, dtype=np.float64) if len(result.records.age) else np.zeros(0)
    is_miss = xcache == X_CACHE_CODES.index("MISS")
    served_before = misses_for_served_keys(keys, offset, offset + latency, ok, is_miss)
    start_index = int(warm_from)
    cumulative = result.origin_cumulative
    calls_at_start = cumulative[start_index] if start_index < len(cumulative) else None
    calls = None
    if result.origin_calls is not None and calls_at_start is not None and cumulative[0] is not None:
        calls = result.origin_calls - (calls_at_start - cumulative[0])
    windows = (
        distinct_key_windows(zip(keys[counted].tolist(), offset[counted].tolist(), strict=True), cfg.ttl)
        if counted.any()
        else 0
    )
    ideal = ideal_refreshes(zip(keys.tolist(), offset.tolist(), strict=True), cfg.ttl, warm_from) if len(keys) else 0
    drain = result.drain
    excluded = f"requests sent in the first {warm_from:g}s and the origin calls made by then"
    if not drain.get("complete", True):
        excluded += (
            f"; refreshes still queued ({drain.get('queue_depth')}) or calling the origin"
            f" ({drain.get('origin_in_flight')}) {drain.get('timeout_s')}s after the load stopped"
        )
    share = fresh_share(xcache, fresh_codes, counted)
    hot_share = fresh_share(xcache, fresh_codes, on_hot)
    return {
        "from_s": warm_from,
        "seconds": round(seconds, 3),
        "answers": int(np.count_nonzero(counted)),
        "throughput_rps": round(np.count_nonzero(counted & ok) / seconds, 1) if seconds else None,
        "fresh_share": None if share is None else round(share, 4),
        "hot_keys": int(len(hot)),
        "hot_key_rps": HOT_KEY_RPS,
        "hot_fresh_share": None if hot_share is None else round(hot_share, 4),
        "served_age_p99_s": served_age_p99(ages[counted & ok]) if len(ages) == len(offset) else None,
        "latency_p99_ms": percentiles_ms(histogram_of(latency[counted])).get("p99"),
        # What it serves (2xx/304) apart from what it refuses: overload's bound is on the former.
        "served_latency_p99_ms": percentiles_ms(histogram_of(latency[counted & ok])).get("p99"),
        "errors": int(np.count_nonzero(counted & ~ok)),
        "miss_for_served_key": served_before,
        "origin_calls": calls,
        "key_windows": windows,
        "calls_per_key_window": None if calls is None or not windows else round(calls / windows, 4),
        "ideal_refresh_calls": ideal,
        "calls_per_ideal_refresh": None if calls is None or not ideal else round(calls / ideal, 4),
        "drain": drain,
        "excluded": excluded,
    }


def _outage_summary(
    result: RunResult,
    offset: np.ndarray,
    latency: np.ndarray,
    status: np.ndarray,
    keys: np.ndarray,
    errors: np.ndarray,
) -> dict[str, Any]:
    marks = result.outage or {}
    start = float(marks.get("start") or result.config.duration / 3)
    end = float(marks.get("end") or 2 * result.config.duration / 3)
    done = offset + latency
    warm_keys = np.unique(keys[(~errors) & (done < start)])
    warm = np.isin(keys, warm_keys)
    during = (offset >= start) & (offset < end)
    after = offset >= end
    before = offset < start
    calls = marks.get("origin_calls")
    return {
        "start_s": round(start, 3),
        "end_s": round(end, 3),
        "warm_keys": int(len(warm_keys)),
        "errors_before": int(np.count_nonzero(errors & before)),
        "errors_during": int(np.count_nonzero(errors & during)),
        "errors_after": int(np.count_nonzero(errors & after)),
        "errors_on_warm_keys_during_and_after": int(np.count_nonzero(errors & warm & ~before)),
        "errors_on_cold_keys_during_and_after": int(np.count_nonzero(errors & ~warm & ~before)),
        "requests_on_warm_keys_during_and_after": int(np.count_nonzero(warm & ~before)),
        "origin_calls_during": calls,
        "origin_calls_per_second_during": None if calls is None else round(calls / max(end - start, 1e-9), 2),
    }


def _per_second(
    result: RunResult, offset: np.ndarray, latency: np.ndarray, errors: np.ndarray, xcache: np.ndarray
) -> dict[str, Any]:
    # seconds of load only; origin calls made during the drain are reported beside the series
    n = max(result.seconds, int(offset.max()) + 1 if len(offset) else 0)
    sec = offset.astype(np.int64) if len(offset) else np.zeros(0, np.int64)
    requests = np.bincount(sec, minlength=n)[:n]
    errs = np.bincount(sec, weights=errors.astype(np.float64), minlength=n)[:n]
    mix = {}
    for code, name in enumerate(X_CACHE_CODES):
        if name in X_CACHE_SHOWN:
            counts = np.bincount(sec, weights=(xcache == code).astype(np.float64), minlength=n)[:n]
            if counts.any():
                mix[name] = counts.astype(int).tolist()
    lat: dict[str, list[float | None]] = {"p50": [], "p90": [], "p99": [], "max": []}
    order = np.argsort(sec, kind="stable")
    sorted_sec = sec[order]
    sorted_lat = latency[order] * 1000
    bounds = np.searchsorted(sorted_sec, np.arange(n + 1))
    for s in range(n):
        chunk = sorted_lat[bounds[s] : bounds[s + 1]]
        if len(chunk) == 0:
            for values in lat.values():
                values.append(None)
            continue
        p50, p90, p99 = np.percentile(chunk, [50, 90, 99])
        lat["p50"].append(round(float(p50), 3))
        lat["p90"].append(round(float(p90), 3))
        lat["p99"].append(round(float(p99), 3))
        lat["max"].append(round(float(chunk.max()), 3))

    def pad(values: list, size: int) -> list:
        return (list(values) + [None] * size)[:size]

    return {
        "t": list(range(n)),
        "requests": requests.astype(int).tolist(),
        "errors": errs.astype(int).tolist(),
        "x_cache": mix,
        "latency_ms": lat,
        "origin_calls": pad(result.origin_calls_per_second, n),
        "origin_calls_after_load": sum(v or 0 for v in result.origin_calls_per_second[n:]),
        "origin_calls_all_keys": pad(result.origin_total_per_second, n),
        "queue_depth": pad(result.queue_depth_per_second, n),
    }


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)
