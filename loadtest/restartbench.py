"""Redis restarts empty under load, with and without a warm-up: how many cold misses each way.

For each mode a private stack (launcher.LocalStack) serves the steady open-loop workload of
`python -m loadtest run`. At `restart_at` seconds redis-server is killed and started empty on the
same port; web and worker reconnect by themselves. In the `warm-up` mode, as soon as /readyz
says Redis and the broker answer again, one POST /v1/cache/<namespace>/warm names every key
of the run, hottest first (as an operator would list the keys they know are hot). The report
counts, for the requests sent after the restart, the MISS answers (a request that waited for
the origin), the errors, latency, and the origin calls each way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from loadtest.launcher import LocalStack
from loadtest.openloop import X_CACHE_CODES, OpenLoopRun, RunConfig, RunResult
from loadtest.summary import summarize

MODES = ("no-warm-up", "warm-up")
MISS = X_CACHE_CODES.index("MISS")
STALE = X_CACHE_CODES.index("STALE")


def _ready(web_url: str) -> bool:
    # 200 also answers "degraded" (Redis unreachable, values served from memory): not ready yet.
    try:
        with urllib.request.urlopen(web_url + "/readyz", timeout=1) as resp:
            return bool(resp.status == 200 and json.loads(resp.read()).get("status") == "ready")
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _post_warm(web_url: str, namespace: str, keys: list[str], token: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"{web_url}/v1/cache/{namespace}/warm",
        data=json.dumps({"keys": keys}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Restarter(threading.Thread):
    """Kills and restarts the stack's Redis at `restart_at` s of the run; then warms, if asked."""

    def __init__(
        self,
        stack: LocalStack,
        run: OpenLoopRun,
        restart_at: float,
        warm: bool,
        token: str,
        keys: list[str],
        down_seconds: float = 0.0,
    ) -> None:
        super().__init__(name="restarter", daemon=True)
        self.stack, self.run_, self.restart_at, self.warm = stack, run, restart_at, warm
        self.down_seconds = down_seconds
        self.token, self.keys = token, keys
        self.marks: dict[str, Any] = {}
        self.error: BaseException | None = None

    def _offset(self) -> float:
        return round(time.time() - self.run_.start_wall, 3)

    def run(self) -> None:
        try:
            if not self.run_.clock_started.wait(60):
                raise RuntimeError("the load generator never started")
            time.sleep(max(0.0, self.run_.start_wall + self.restart_at - time.time()))
            self.marks["killed_at_s"] = self._offset()
            self.stack.restart_redis(self.down_seconds)
            self.marks["redis_back_at_s"] = self._offset()
            deadline = time.monotonic() + 30
            while not _ready(self.stack.web_urls[0]) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.marks["ready_at_s"] = self._offset()
            if self.warm:
                started = time.monotonic()
                status, answer = _post_warm(self.stack.web_urls[0], self.run_.cfg.namespace, self.keys, self.token)
                self.marks["warm_up"] = {
                    "sent_at_s": self.marks["ready_at_s"],
                    "keys": len(self.keys),
                    "status": status,
                    "answer": answer,
                    "request_s": round(time.monotonic() - started, 3),
                }
        except BaseException as exc:  # noqa: BLE001 - reported by the bench after the run
            self.error = exc


def after_restart(result: RunResult, restart_s: float) -> dict[str, Any]:
    """What the requests intended to be sent after the restart got."""
    rec = result.records
    offset = np.frombuffer(rec.offset, dtype=np.float64)
    latency = np.frombuffer(rec.latency, dtype=np.float64)
    status = np.frombuffer(rec.status, dtype=np.int16).astype(np.int32)
    xcache = np.frombuffer(rec.x_cache, dtype=np.int8)
    keys = np.frombuffer(rec.key, dtype=np.int32)
    before, after = offset < restart_s, offset >= restart_s
    ok = (status >= 200) & (status < 400)
    miss = after & ok & (xcache == MISS)
    stale = after & ok & (xcache == STALE)  # while Redis is down: values answered from memory
    errors = after & ~ok
    served_before = set(keys[before & ok].tolist())
    miss_keys = set(keys[miss].tolist())
    by_status: dict[str, int] = {}
    for code in status[errors].tolist():
        by_status[str(code)] = by_status.get(str(code), 0) + 1
    lat_ms = latency[after] * 1000
    cumulative = result.origin_cumulative
    second = int(restart_s)
    origin_after = None
    if result.origin_calls is not None and second < len(cumulative) and cumulative[second] is not None:
        origin_after = result.origin_calls - (cumulative[second] - cumulative[0])  # type: ignore[operator]
    return {
        "requests": int(after.sum()),
        "miss": int(miss.sum()),
        "miss_keys": len(miss_keys),
        "stale": int(stale.sum()),
        "miss_for_key_served_before": int(sum(1 for k in keys[miss].tolist() if k in served_before)),
        "errors": int(errors.sum()),
        "errors_by_status": by_status,
        "last_miss_after_s": round(float(offset[miss].max()) - restart_s, 3) if miss.any() else None,
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 1) if len(lat_ms) else None,
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 1) if len(lat_ms) else None,
        "origin_calls_from_restart_second": origin_after,
        "before_restart": {
            "requests": int(before.sum()),
            "miss": int((before & ok & (xcache == MISS)).sum()),
            "errors": int((before & ~ok).sum()),
        },
    }


def run_restart_bench(
    base: RunConfig,
    modes: list[str],
    restart_at: float,
    stack_env: dict[str, str],
    progress: Any = print,
    down_seconds: float = 0.0,
) -> list[dict[str, Any]]:
    """One fresh stack per mode, the same workload (same seed) each: one result row per mode."""
    rows = []
    for mode in modes:
        token = secrets.token_hex(16)
        env = {
            **stack_env,
            "CACHE_TTL_SECONDS": f"{base.ttl:g}",
            "ADMIN_TOKEN": token,
            "WARM_MAX_KEYS": str(max(10_000, base.keys)),
        }
        with LocalStack(env=env) as stack:
            cfg = dataclasses.replace(
                base,
                url=stack.web_urls[0],
                origin_url=stack.origin_url,
                metrics_urls=stack.metrics_urls,
                label=mode,
                # the generator's own "after warm-up" figures (unused here) count from the restart
                warmup=restart_at,
            )
            run = OpenLoopRun(cfg)
            # KeySpace numbers keys by Zipf rank: k0 is the hottest.
            restarter = Restarter(
                stack, run, restart_at, mode == "warm-up", token, run.keyspace.names(), down_seconds=down_seconds
            )
            restarter.start()
            result = asyncio.run(run.run())
            restarter.join(60)
        if restarter.error is not None:
            raise RuntimeError(f"{mode}: the restart failed: {restarter.error!r}")
        marks = restarter.marks
        summary = summarize(result)
        row = {
            "mode": mode,
            "restart": {k: v for k, v in marks.items() if k != "warm_up"},
            "warm_up": marks.get("warm_up"),
            "after_restart": after_restart(result, marks["killed_at_s"]),
            "whole_run": {
                "requests": summary["generator"]["completed"],
                "errors": summary["errors"]["total"],
                "origin_calls": summary["origin"]["calls"],
            },
            "notes": summary["notes"],
        }
        rows.append(row)
        progress(restart_line(row))
    return rows


def restart_line(row: dict[str, Any]) -> str:
    a = row["after_restart"]
    warm = row["warm_up"]
    warm_text = ""
    if warm:
        warm_text = f"; warm-up of {warm['keys']} keys: {warm['status']} {warm['answer']} in {warm['request_s']} s"
    return (
        f"{row['mode']}: after the restart {a['stale']} STALE, {a['miss']} MISS ({a['miss_keys']} keys,"
        f" {a['miss_for_key_served_before']} for keys served before it), {a['errors']} errors"
        f" {a['errors_by_status'] or ''}, p99 {a['p99_ms']} ms,"
        f" last MISS {a['last_miss_after_s']} s after, origin calls {a['origin_calls_from_restart_second']}" + warm_text
    )


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# Redis restarted empty under load, with and without a warm-up",
        "",
        f"`{report['command']}`",
        "",
        f"Commit {report['commit']}; {report['machine']['description']}.",
        "",
        f"Steady open-loop load on `{cfg['namespace']}`: {cfg['rate']:g} req/s for {cfg['duration']:g} s over"
        f" {cfg['keys']} keys (Zipf {cfg['zipf']:g}, seed {cfg['seed']}), CACHE_TTL_SECONDS={cfg['ttl']:g}; at"
        f" {report['restart_at']:g} s redis-server is killed and, {report.get('down_seconds', 0):g} s later,"
        " started empty on the same port. A fresh stack per mode. Counted: the requests intended to be sent"
        " from the kill on (STALE: answered from a web process's memory while Redis was down).",
        "",
        "| mode | requests | STALE | MISS (waited for the origin) | keys missed | MISS for a key served before |"
        " errors | p50 ms | p99 ms | last MISS after | origin calls | warm-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        a, warm = row["after_restart"], row["warm_up"]
        errors = f"{a['errors']}" + (f" ({a['errors_by_status']})" if a["errors_by_status"] else "")
        warm_text = "—"
        if warm:
            ans = warm["answer"]
            warm_text = (
                f"{warm['status']}: {ans.get('enqueued')} enqueued, {ans.get('in_flight')} in flight,"
                f" {ans.get('already_fresh')} fresh; {warm['request_s']} s, sent {warm['sent_at_s']} s"
            )
        last = "—" if a["last_miss_after_s"] is None else f"{a['last_miss_after_s']} s"
        lines.append(
            f"| {row['mode']} | {a['requests']} | {a['stale']} | **{a['miss']}** | {a['miss_keys']} |"
            f" {a['miss_for_key_served_before']} | {errors} | {a['p50_ms']} | {a['p99_ms']} | {last} |"
            f" {a['origin_calls_from_restart_second']} | {warm_text} |"
        )
    lines += ["", "Restart marks (seconds from the start of the load):", ""]
    for row in report["rows"]:
        lines.append(f"- {row['mode']}: {row['restart']}")
    notes = [f"{row['mode']}: {note}" for row in report["rows"] for note in row["notes"]]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
