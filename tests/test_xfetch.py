"""The XFetch rule as a pure function, and the Lua read and write scripts agreeing with it."""

from __future__ import annotations

import math
import random

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.keys import EntryKeys
from shared.namespaces import Namespace
from shared.store import CacheStore, Fence, new_token
from shared.xfetch import (
    HEAD_START_JITTER,
    MAX_HEAD_START_SHARE,
    SPREAD_WEIGHT,
    Decision,
    decide,
    draw_u,
    head_start_ms,
    may_write,
    smooth_duration,
    xfetch_should_refresh,
)

times = st.floats(min_value=0, max_value=1e12, allow_nan=False)
deltas = st.floats(min_value=0, max_value=1e6, allow_nan=False)
betas = st.floats(min_value=0, max_value=100, allow_nan=False)
us = st.floats(min_value=0, max_value=1, allow_nan=False)
ttls = st.none() | st.floats(min_value=0, max_value=1e9, allow_nan=False)
DEFAULT_BETA = 2.0


@given(now=times, soft=times, delta=deltas, u=us, ttl=ttls)
def test_beta_zero_never_refreshes_early(now: float, soft: float, delta: float, u: float, ttl: float | None) -> None:
    assert xfetch_should_refresh(now, soft, delta, 0.0, u, ttl) is False


@given(now=times, soft=times, delta=deltas, beta=betas)
def test_u_zero_never_crashes(now: float, soft: float, delta: float, beta: float) -> None:
    result = xfetch_should_refresh(now, soft, delta, beta, 0.0)
    assert isinstance(result, bool)
    assert result == (beta > 0 and delta > 0 and now - delta * beta * math.log(1e-300) >= soft)


@given(
    soft=st.floats(min_value=1e6, max_value=1e9),
    delta=st.floats(min_value=1, max_value=1e4),
    beta=st.floats(min_value=0.01, max_value=10),
    u=st.floats(min_value=1e-9, max_value=1),
    ttl=ttls,
    a=st.floats(min_value=0, max_value=1),
    b=st.floats(min_value=0, max_value=1),
)
def test_for_one_draw_a_later_read_refreshes_whenever_an_earlier_one_does(
    soft: float, delta: float, beta: float, u: float, ttl: float | None, a: float, b: float
) -> None:
    earlier, later = sorted((soft - a * 10 * delta * beta, soft - b * 10 * delta * beta))
    if xfetch_should_refresh(earlier, soft, delta, beta, u, ttl):
        assert xfetch_should_refresh(later, soft, delta, beta, u, ttl)


@given(delta=deltas, beta=betas, u=us, ttl=st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_the_head_start_is_never_more_than_a_quarter_of_the_ttl(
    delta: float, beta: float, u: float, ttl: float
) -> None:
    head = head_start_ms(delta, beta, u, ttl)
    assert 0 <= head <= ttl * MAX_HEAD_START_SHARE


def test_a_value_draws_a_head_start_of_beta_refresh_durations_within_the_jitter() -> None:
    rng = random.Random(7)
    draws = [draw_u(rng) for _ in range(20_000)]
    factors = [-math.log(u) for u in draws]  # head start / (d * beta)
    assert min(factors) >= 1 - HEAD_START_JITTER - 1e-12 and max(factors) <= 1 + HEAD_START_JITTER + 1e-12
    assert abs(sum(factors) / len(factors) - 1) < 0.01
    # Uniform over the band: each fifth of it holds a fifth of the draws (no exponential tail).
    fifths = [0] * 5
    for f in factors:
        fifths[min(4, int((f - (1 - HEAD_START_JITTER)) / (2 * HEAD_START_JITTER) * 5))] += 1
    assert all(abs(n / len(factors) - 0.2) < 0.015 for n in fifths)
    # Below the TTL's bound the head start is exactly -d * beta * ln(u).
    delta, beta, ttl = 300.0, DEFAULT_BETA, 60_000.0
    for u in draws[:100]:
        assert head_start_ms(delta, beta, u, ttl) == -delta * beta * math.log(u)


@given(
    durations=st.lists(st.floats(min_value=1, max_value=5_000), min_size=1, max_size=30),
    v=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_with_the_default_beta_the_head_start_covers_the_smoothed_duration_and_its_spread(
    durations: list[float], v: float
) -> None:
    mean = spread = None
    for measured in durations:
        mean, spread, delta = smooth_duration(mean, spread, measured)
    u = math.exp(-(1 + HEAD_START_JITTER * (2 * v - 1)))  # any draw of the band
    head = head_start_ms(delta, DEFAULT_BETA, u, ttl_ms=None)
    assert head >= (1 - HEAD_START_JITTER) * DEFAULT_BETA * delta >= mean + SPREAD_WEIGHT * spread


def test_the_smoothed_duration_follows_the_measurements_and_their_spread() -> None:
    first = smooth_duration(None, None, 120.0)
    assert first == (120.0, 0.0, 120.0)
    steady = first
    for _ in range(40):
        steady = smooth_duration(steady.mean_ms, steady.spread_ms, 120.0)
    assert steady == (120.0, 0.0, 120.0)  # a constant duration has no spread
    # Alternating 100 / 300 ms: the mean settles near 200, the deviation near 100, d near 400.
    jittery = first
    for i in range(200):
        jittery = smooth_duration(jittery.mean_ms, jittery.spread_ms, 100.0 if i % 2 else 300.0)
    assert 180 < jittery.mean_ms < 220 and 80 < jittery.spread_ms < 120
    assert jittery.delta_ms == jittery.mean_ms + SPREAD_WEIGHT * jittery.spread_ms
    # An entry from before the spread was stored has a mean only.
    assert smooth_duration(100.0, None, 200.0) == (125.0, 25.0, 175.0)


def test_on_a_loaded_machine_the_head_start_stays_bounded_against_the_ttl() -> None:
    # A hot key (read continuously), TTL 2 s, a 20 ms origin measured at 0.6-3 s by a loaded
    # machine's queue: the previous rule (exponential head start of mean d * beta, beta 4,
    # unbounded) refreshed such a key 4-5 times in 3 s. Bounded by a quarter of the TTL, each
    # value is a HIT for at least 1.5 s of its 2 s, so at most 4/3 refreshes start per TTL.
    rng = random.Random(3)
    ttl, now = 2_000.0, 0.0
    mean = spread = None
    delta, u, soft = 0.0, draw_u(rng), ttl
    starts = []
    while now < 60_000:
        now = max(now, soft - head_start_ms(delta, 4.0, u, ttl))  # the first read that is EARLY
        starts.append(now)
        measured = rng.uniform(600, 3_000)
        now += measured  # the refresh lands; until then reads are EARLY or STALE, the lease held
        mean, spread, delta = smooth_duration(mean, spread, measured)
        u, soft = draw_u(rng), now + ttl
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= (1 - MAX_HEAD_START_SHARE) * ttl
    assert len(starts) / (60_000 / ttl) <= 1 / (1 - MAX_HEAD_START_SHARE)


def test_larger_beta_refreshes_earlier() -> None:
    draws = [draw_u(random.Random(i)) for i in range(5000)]
    low = sum(xfetch_should_refresh(900, 1000, 100, 0.5, u) for u in draws)
    high = sum(xfetch_should_refresh(900, 1000, 100, 1.0, u) for u in draws)
    assert high > low


@given(now=times, soft=st.none() | times, delta=deltas, beta=betas, u=us, stale=st.booleans(), ttl=ttls)
def test_decide_is_total_and_consistent(
    now: float, soft: float | None, delta: float, beta: float, u: float, stale: bool, ttl: float | None
) -> None:
    d = decide(now, soft, delta, beta, u, stale, ttl)
    if soft is None:
        assert d is Decision.MISS
    elif now >= soft:
        assert d is (Decision.STALE if stale else Decision.MISS)
    else:
        assert d in (Decision.HIT, Decision.EARLY)


@given(started=st.integers(0, 10**13), at=st.none() | st.integers(0, 10**13), tomb=st.none() | st.integers(0, 10**13))
def test_fencing_rule(started: int, at: int | None, tomb: int | None) -> None:
    allowed = may_write(started, at, tomb)
    if at is not None and started <= at:
        assert not allowed
    if tomb is not None and started <= tomb:
        assert not allowed
    if (at is None or started > at) and (tomb is None or started > tomb):
        assert allowed


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    offset=st.integers(-3000, 3000),
    delta=st.sampled_from([0.0, 1.0, 37.5]) | st.floats(min_value=0, max_value=5000),
    beta=st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.5]),
    u=st.floats(min_value=0, max_value=1) | st.builds(draw_u, st.randoms(use_true_random=False)),
    ttl=st.none() | st.integers(0, 20_000),
    stale=st.booleans(),
)
def test_lua_read_script_agrees_with_pure_rule(
    store: CacheStore,
    ns: Namespace,
    offset: int,
    delta: float,
    beta: float,
    u: float,
    ttl: int | None,
    stale: bool,
) -> None:
    # The entry's soft expiry is set relative to the Redis clock; the script reports the `now`
    # it decided with, so the pure function can be asked the same question exactly. Durations
    # up to 5 s against TTLs from 0 to 20 s put the head start on both sides of its bound.
    ns_case = Namespace(**{**ns.__dict__, "strategy": "xfetch" if stale else "lock", "xfetch_beta": beta})
    key = f"agree-{new_token()}"
    keys = EntryKeys.of(ns_case.name, key)
    soft = store.now_ms() + offset
    fields: dict[str, object] = {"v": b"x", "at": 1, "soft": soft, "d": repr(delta), "u": repr(u), "neg": "0"}
    if ttl is not None:
        fields["ttl"] = ttl
    store.redis.hset(keys.entry, mapping=fields)  # type: ignore[arg-type]
    result = store.read(ns_case, key, new_token())
    expected = decide(result.now_ms, soft, delta, ns_case.beta, u, stale, ttl)
    assert result.decision is expected, (result, expected)
    assert result.won_lease is (expected is not Decision.HIT)
    assert result.ttl_ms == ttl


def _run_lease(store: CacheStore, ns: Namespace, key: str) -> str:
    store.redis.delete(EntryKeys.of(ns.name, key).lease, EntryKeys.of(ns.name, key).queued)
    token = new_token()
    assert store.take_lease(ns, key, token)
    run_token = store.claim(ns, key, token)
    assert run_token
    return run_token


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ago=st.lists(st.integers(1, 5_000), min_size=1, max_size=6), legacy=st.none() | st.integers(1, 2_000))
def test_the_write_script_smooths_the_refresh_duration_as_the_pure_rule_does(
    store: CacheStore, ns: Namespace, ago: list[int], legacy: int | None
) -> None:
    # Each write's lease was won `ago` ms before it; the script measures from won_at to its own
    # now and folds that into the stored mean and deviation exactly as smooth_duration does.
    # `legacy`: the key starts as an entry of the previous release, with a d and no dm/dv.
    key = f"smooth-{new_token()}"
    entry = EntryKeys.of(ns.name, key).entry
    mean: float | None = None
    spread: float | None = None
    if legacy is not None:
        store.redis.hset(entry, mapping={"v": b"old", "at": 1, "soft": 1, "d": legacy, "u": 0.5, "neg": "0"})
        mean = float(legacy)
    started = 1
    for back in ago:
        now = store.now_ms()
        won_at, started = now - back, max(started + 1, now)  # each call starts after the stored one
        written = store.fenced_write(
            ns, key, Fence(_run_lease(store, ns, key), started, won_at), value=b"v", content_type="text/plain"
        )
        assert written.written
        mean, spread, delta = smooth_duration(mean, spread, max(1, written.written_at_ms - won_at))
        stored = store.redis.hmget(entry, "dm", "dv", "d")
        assert [float(x) for x in stored] == [mean, spread, delta]
        assert written.delta_ms == delta
        state = store.inspect(ns, key)
        assert (state.duration_mean_ms, state.duration_spread_ms, state.delta_ms) == (mean, spread, delta)
        assert state.ttl_ms == ns.soft_ttl_ms
