"""The shared breaker after its reset timeout: one probe at a time reaches the origin across every
worker process, a failed probe re-opens it, a good one closes it."""

from __future__ import annotations

from pathlib import Path

from shared.breaker import breaker_state_key
from tests.faults.fixture_origin import FixtureOrigin
from tests.faults.observe import TrafficLoop, worker_metric
from tests.stack import stack_for, wait_until

RESET_SECONDS = 2.0
PROBE_SECONDS = 1.0


def test_half_open_breaker_lets_one_probe_through_and_a_failed_probe_reopens_it(tmp_path: Path) -> None:
    with FixtureOrigin() as origin:
        namespaces = f"""
[namespaces.br]
strategy = "swr"
origin = "{origin.base_url}/v/{{key}}"
cache_ttl_seconds = 1
"""
        env = {
            "BREAKER_FAIL_MAX": "2",
            "BREAKER_RESET_TIMEOUT_SECONDS": str(RESET_SECONDS),
            "LEASE_TTL_SECONDS": "3",
        }
        # Two worker "hosts" of two pool processes each: four processes competing for the probe.
        with stack_for(tmp_path, namespaces, env, workers=2, worker_concurrency=2) as stack:
            redis = stack.redis.client()
            state_key = breaker_state_key(origin.base_url.removeprefix("http://"))
            keys = [f"b{i}" for i in range(8)]
            originals = {k: stack.get("br", k).content for k in keys}

            with TrafficLoop([stack.url("br", k) for k in keys], timeout=5, pause=0.01) as traffic:
                origin.set(mode="fail")
                wait_until(lambda: redis.get(state_key) == b"open", 15, "the breaker to open")
                origin.set(latency=PROBE_SECONDS)
                wait_until(lambda: origin.in_flight == 0, 5, "calls made before the breaker opened to end")
                origin.reset_max_in_flight()
                first_call = len(origin.calls)

                def two_failed_probes_and_open_again() -> bool:
                    probes = [c for c in origin.calls[first_call:] if c.ended]
                    return len(probes) >= 2 and redis.get(state_key) == b"open" and origin.in_flight == 0

                wait_until(two_failed_probes_and_open_again, 20, "two failed probes", interval=0.05)
                max_in_flight = origin.max_in_flight
                probes = origin.calls[first_call:]

                origin.set(mode="ok", latency=0.0)
                wait_until(lambda: redis.get(state_key) == b"closed", 15, "a good probe to close the breaker")
                wait_until(
                    lambda: all(stack.get("br", k).content != originals[k] for k in keys),
                    15,
                    "every key refreshed once the breaker closed",
                )

            assert max_in_flight == 1, f"{max_in_flight} calls reached the origin at once while not closed"
            # After each failed probe the breaker stayed open for another reset timeout (allow
            # 1 s of slack for worker scheduling).
            starts = [c.started for c in probes]
            gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
            assert all(g >= PROBE_SECONDS + RESET_SECONDS - 1.0 - 0.1 for g in gaps), gaps
            assert all(c.status == 500 for c in probes if c.ended)

            assert worker_metric(stack, "herdless_breaker_transitions_total", to="half-open") >= 2
            assert worker_metric(stack, "herdless_breaker_transitions_total", to="open") >= 3
            assert worker_metric(stack, "herdless_breaker_transitions_total", to="closed") >= 1
            assert worker_metric(stack, "herdless_refresh_total", outcome="breaker_open") >= 1
            failed = [(s.status, s.body[:80]) for s in traffic.samples if s.status != 200]
            assert not failed, failed[:5]
