"""What the generator sends and when: arrival schedules, Zipf key choice, run key names.

Everything here is pure (no I/O, no clock): a schedule is a list of offsets in
seconds from the start of the run, decided before the first request is sent,
so the server can never slow the schedule down (open loop).
"""

from __future__ import annotations

import bisect
import math
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

ARRIVALS = ("constant", "poisson")


def arrival_offsets(rate: float, duration: float, arrivals: str, rng: random.Random) -> list[float]:
    """Intended send times (seconds from start) for `rate` requests/s over `duration` seconds.

    `constant` spaces requests exactly 1/rate apart; `poisson` draws exponential
    gaps with mean 1/rate (independent arrivals, as many real clients produce).
    """
    if rate <= 0 or duration <= 0:
        return []
    if arrivals == "constant":
        count = int(math.floor(rate * duration + 1e-9))
        return [i / rate for i in range(count)]
    if arrivals == "poisson":
        offsets: list[float] = []
        t = rng.expovariate(rate)
        while t < duration:
            offsets.append(t)
            t += rng.expovariate(rate)
        return offsets
    raise ValueError(f"arrivals must be one of {ARRIVALS}, not {arrivals!r}")


class ZipfSampler:
    """Draws key indices 0..n-1 with P(i) proportional to 1/(i+1)**exponent.

    Exponent 0 is uniform. Sampling is a binary search in the precomputed CDF.
    """

    def __init__(self, n: int, exponent: float) -> None:
        if n < 1:
            raise ValueError("need at least one key")
        if exponent < 0:
            raise ValueError("zipf exponent must be >= 0")
        weights = [1.0 / (i + 1) ** exponent for i in range(n)]
        total = math.fsum(weights)
        self.probabilities = [w / total for w in weights]
        cdf: list[float] = []
        acc = 0.0
        for p in self.probabilities:
            acc += p
            cdf.append(acc)
        cdf[-1] = 1.0
        self._cdf = cdf

    def sample(self, rng: random.Random) -> int:
        return bisect.bisect_left(self._cdf, rng.random())

    def samples(self, count: int, rng: random.Random) -> list[int]:
        cdf = self._cdf
        draw = rng.random
        find = bisect.bisect_left
        return [find(cdf, draw()) for _ in range(count)]


def new_run_id(now: float | None = None) -> str:
    """A run id unique across runs, so no run ever sees another run's cached keys."""
    stamp = time.strftime("%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}{secrets.token_hex(3)}"


@dataclass(frozen=True)
class KeySpace:
    """The cache keys of one run: `run-<id>-k<n>`, all sharing the run's prefix."""

    run_id: str
    count: int

    @property
    def prefix(self) -> str:
        return f"run-{self.run_id}-"

    def key(self, index: int) -> str:
        return f"{self.prefix}k{index}"

    def herd_key(self) -> str:
        return f"{self.prefix}herd"

    def names(self) -> list[str]:
        return [self.key(i) for i in range(self.count)]


def distinct_key_windows(requests: Sequence[tuple[int, float]] | zip, ttl: float) -> int:
    """Number of distinct (key, floor(t / ttl)) pairs among requested (key, t) pairs.

    This is the number of TTL windows in which each key was wanted: the least
    number of origin calls any cache can get away with.
    """
    if ttl <= 0:
        raise ValueError("ttl must be > 0")
    return len({(key, math.floor(t / ttl)) for key, t in requests})


def ideal_refreshes(requests: Sequence[tuple[int, float]] | zip, ttl: float, counted_from: float = 0.0) -> int:
    """Origin calls of an ideal refresh-on-expiry cache on this very trace: one call each time a
    key is requested and its value (fresh for `ttl` from the call) has expired, counting calls
    from `counted_from` on; values fetched before it carry over.

    Grid windows overstate what a key needs: one refresh covers parts of two windows, so a key
    read now and then costs less than one call per window it was read in, whatever the cache.
    This is the fair yardstick for a cache that refreshes only keys that are asked for."""
    fresh_until: dict[int, float] = {}
    calls = 0
    for key, t in sorted(requests, key=lambda kt: kt[1]):
        if t >= fresh_until.get(key, float("-inf")):
            fresh_until[key] = t + ttl
            if t >= counted_from:
                calls += 1
    return calls


def origin_calls_per_key_window(origin_calls: int, key_windows: int) -> float | None:
    """The key figure: origin calls divided by requested (key, TTL window) pairs; 1.0 is ideal."""
    if key_windows <= 0:
        return None
    return origin_calls / key_windows
