"""Locust scenario for people who prefer Locust's web UI (`pip install locust`).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

Locust users are closed-loop (each waits for its answer before the next
request), so under overload Locust slows down with the server and its
latencies hide the queueing (coordinated omission). Use it to poke at the
stack; use `python -m loadtest run` for the numbers.

Environment: LOADTEST_NAMESPACE (demo), LOADTEST_KEYS (100), LOADTEST_ZIPF (1.1),
LOADTEST_USER_RATE (requests per second per user, 10).
"""

from __future__ import annotations

import os
import random
from urllib.parse import quote

from locust import FastHttpUser, constant_throughput, events, task

from loadtest.workload import KeySpace, ZipfSampler, new_run_id

NAMESPACE = os.environ.get("LOADTEST_NAMESPACE", "demo")
KEYS = int(os.environ.get("LOADTEST_KEYS", "100"))
ZIPF = float(os.environ.get("LOADTEST_ZIPF", "1.1"))
USER_RATE = float(os.environ.get("LOADTEST_USER_RATE", "10"))

# one key prefix per Locust run, so a run never reads another run's cache
KEY_SPACE = KeySpace(new_run_id(), KEYS)
SAMPLER = ZipfSampler(KEYS, ZIPF)


@events.init.add_listener
def announce(environment, **_kwargs):  # noqa: ANN001, ANN201 - Locust hook signature
    print(f"herdless locust: namespace {NAMESPACE}, keys {KEY_SPACE.prefix}k0..k{KEYS - 1}, Zipf {ZIPF}")


class CacheReader(FastHttpUser):
    wait_time = constant_throughput(USER_RATE)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def read_key(self) -> None:
        key = KEY_SPACE.key(SAMPLER.sample(self.rng))
        with self.client.get(
            f"/v1/cache/{NAMESPACE}/{quote(key, safe='')}", name=f"/v1/cache/{NAMESPACE}/[key]", catch_response=True
        ) as resp:
            if resp.status_code not in (200, 304):
                resp.failure(f"HTTP {resp.status_code}")
                return
            # one Locust stats row per X-Cache outcome, so the UI shows the mix
            x_cache = resp.headers.get("X-Cache", "none")
            resp.request_meta["name"] = f"/v1/cache/{NAMESPACE}/[key] {x_cache}"
            resp.success()
