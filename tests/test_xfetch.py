"""The XFetch rule as a pure function, and the Lua read script agreeing with it."""

from __future__ import annotations

import math
import random

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.keys import EntryKeys
from shared.namespaces import Namespace
from shared.store import CacheStore, new_token
from shared.xfetch import Decision, decide, draw_u, may_write, smooth_delta, xfetch_should_refresh

times = st.floats(min_value=0, max_value=1e12, allow_nan=False)
deltas = st.floats(min_value=0, max_value=1e6, allow_nan=False)
betas = st.floats(min_value=0, max_value=100, allow_nan=False)
us = st.floats(min_value=0, max_value=1, allow_nan=False)


@given(now=times, soft=times, delta=deltas, u=us)
def test_beta_zero_never_refreshes_early(now: float, soft: float, delta: float, u: float) -> None:
    assert xfetch_should_refresh(now, soft, delta, 0.0, u) is (False)


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
    a=st.floats(min_value=0, max_value=1),
    b=st.floats(min_value=0, max_value=1),
)
def test_for_one_draw_a_later_read_refreshes_whenever_an_earlier_one_does(
    soft: float, delta: float, beta: float, u: float, a: float, b: float
) -> None:
    earlier, later = sorted((soft - a * 10 * delta * beta, soft - b * 10 * delta * beta))
    if xfetch_should_refresh(earlier, soft, delta, beta, u):
        assert xfetch_should_refresh(later, soft, delta, beta, u)


def test_probability_of_early_refresh_rises_toward_expiry() -> None:
    rng = random.Random(7)
    soft, delta, beta = 1_000_000.0, 100.0, 1.0
    draws = [draw_u(rng) for _ in range(20_000)]
    assert all(0 < u <= 1 for u in draws)
    fractions = []
    for left in (400, 200, 100, 50, 10, 1):
        fractions.append(sum(xfetch_should_refresh(soft - left, soft, delta, beta, u) for u in draws) / len(draws))
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]
    # P(refresh with `left` ms to go) = exp(-left / (delta * beta)): check the shape, not just the order.
    assert abs(fractions[2] - math.exp(-1)) < 0.02
    assert fractions[-1] > 0.98 and fractions[0] < 0.03


def test_larger_beta_refreshes_earlier() -> None:
    draws = [draw_u(random.Random(i)) for i in range(5000)]
    low = sum(xfetch_should_refresh(900, 1000, 100, 0.5, u) for u in draws)
    high = sum(xfetch_should_refresh(900, 1000, 100, 3.0, u) for u in draws)
    assert high > low


@given(now=times, soft=st.none() | times, delta=deltas, beta=betas, u=us, stale=st.booleans())
def test_decide_is_total_and_consistent(
    now: float, soft: float | None, delta: float, beta: float, u: float, stale: bool
) -> None:
    d = decide(now, soft, delta, beta, u, stale)
    if soft is None:
        assert d is Decision.MISS
    elif now >= soft:
        assert d is (Decision.STALE if stale else Decision.MISS)
    else:
        assert d in (Decision.HIT, Decision.EARLY)


def test_smoothed_delta_blends_history() -> None:
    assert smooth_delta(None, 120) == 120
    assert smooth_delta(100, 300) == 200


@given(started=st.integers(0, 10**13), at=st.none() | st.integers(0, 10**13), tomb=st.none() | st.integers(0, 10**13))
def test_fencing_rule(started: int, at: int | None, tomb: int | None) -> None:
    allowed = may_write(started, at, tomb)
    if at is not None and started <= at:
        assert not allowed
    if tomb is not None and started <= tomb:
        assert not allowed
    if (at is None or started > at) and (tomb is None or started > tomb):
        assert allowed


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    offset=st.integers(-3000, 3000),
    delta=st.integers(0, 5000),
    beta=st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.5]),
    u=st.floats(min_value=0, max_value=1),
    stale=st.booleans(),
)
def test_lua_read_script_agrees_with_pure_rule(
    store: CacheStore, ns: Namespace, offset: int, delta: int, beta: float, u: float, stale: bool
) -> None:
    # The entry's soft expiry is set relative to the Redis clock; the script reports the `now`
    # it decided with, so the pure function can be asked the same question exactly.
    ns_case = Namespace(**{**ns.__dict__, "strategy": "xfetch" if stale else "lock", "xfetch_beta": beta})
    key = f"agree-{new_token()}"
    keys = EntryKeys.of(ns_case.name, key)
    soft = store.now_ms() + offset
    store.redis.hset(keys.entry, mapping={"v": b"x", "at": 1, "soft": soft, "d": delta, "u": repr(u), "neg": "0"})
    result = store.read(ns_case, key, new_token())
    expected = decide(result.now_ms, soft, delta, ns_case.beta, u, stale)
    assert result.decision is expected, (result, expected)
    assert result.won_lease is (expected is not Decision.HIT)
