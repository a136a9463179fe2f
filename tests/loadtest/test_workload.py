"""The pure parts of the load generator: schedules, Zipf keys, the per-key-per-TTL-window figure."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from loadtest.workload import (
    KeySpace,
    ZipfSampler,
    arrival_offsets,
    distinct_key_windows,
    new_run_id,
    origin_calls_per_key_window,
)


def test_constant_schedule_is_evenly_spaced_and_never_reaches_the_end() -> None:
    offsets = arrival_offsets(1000, 2.0, "constant", random.Random(1))
    assert len(offsets) == 2000
    assert offsets[0] == 0.0
    assert offsets[-1] < 2.0
    gaps = {round(b - a, 9) for a, b in zip(offsets, offsets[1:], strict=False)}
    assert gaps == {0.001}


def test_poisson_schedule_has_the_requested_mean_rate_and_exponential_gaps() -> None:
    offsets = arrival_offsets(500, 20.0, "poisson", random.Random(7))
    assert 9500 < len(offsets) < 10500
    assert offsets == sorted(offsets)
    assert all(0 < t < 20.0 for t in offsets)
    gaps = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(1 / 500, rel=0.05)
    # exponential: about e^-1 of the gaps are longer than the mean
    longer = sum(g > mean for g in gaps) / len(gaps)
    assert longer == pytest.approx(0.368, abs=0.03)


def test_schedule_is_decided_by_the_seed_alone() -> None:
    a = arrival_offsets(300, 5, "poisson", random.Random(42))
    b = arrival_offsets(300, 5, "poisson", random.Random(42))
    assert a == b


def test_empty_and_unknown_schedules() -> None:
    assert arrival_offsets(0, 10, "constant", random.Random()) == []
    assert arrival_offsets(10, 0, "poisson", random.Random()) == []
    with pytest.raises(ValueError):
        arrival_offsets(10, 1, "bursty", random.Random())


def test_zipf_probabilities_follow_the_power_law() -> None:
    sampler = ZipfSampler(100, 1.1)
    p = sampler.probabilities
    assert sum(p) == pytest.approx(1.0)
    assert p[0] / p[1] == pytest.approx(2**1.1)
    assert p[0] / p[9] == pytest.approx(10**1.1)
    assert all(a > b for a, b in zip(p, p[1:], strict=False))


def test_zipf_samples_match_the_probabilities() -> None:
    sampler = ZipfSampler(10, 1.1)
    draws = sampler.samples(100_000, random.Random(3))
    assert min(draws) == 0 and max(draws) == 9
    counts = Counter(draws)
    for key, prob in enumerate(sampler.probabilities):
        assert counts[key] / 100_000 == pytest.approx(prob, abs=0.01)


def test_zipf_exponent_zero_is_uniform() -> None:
    sampler = ZipfSampler(4, 0.0)
    assert sampler.probabilities == pytest.approx([0.25] * 4)
    with pytest.raises(ValueError):
        ZipfSampler(0, 1.0)


def test_every_run_gets_its_own_key_prefix() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    space = KeySpace("abc", 3)
    assert space.names() == ["run-abc-k0", "run-abc-k1", "run-abc-k2"]
    assert space.herd_key().startswith(space.prefix)
    assert KeySpace(new_run_id(), 1).prefix != KeySpace(new_run_id(), 1).prefix


def test_key_windows_count_each_key_once_per_ttl_window() -> None:
    requests = [(0, 0.1), (0, 0.9), (0, 4.99), (0, 5.0), (1, 0.2), (1, 12.0), (0, 5.5)]
    # key 0: windows 0 and 1; key 1: windows 0 and 2
    assert distinct_key_windows(requests, ttl=5.0) == 4
    assert distinct_key_windows(requests, ttl=1.0) == 5  # key 0: windows 0, 4, 5; key 1: 0, 12
    assert distinct_key_windows([], ttl=5.0) == 0
    with pytest.raises(ValueError):
        distinct_key_windows(requests, ttl=0)


def test_origin_calls_per_key_window_is_one_for_a_perfect_cache() -> None:
    hot = [(0, i * 0.01) for i in range(1000)]  # one key, 10 s, TTL 1 s
    windows = distinct_key_windows(hot, ttl=1.0)
    assert windows == 10
    assert origin_calls_per_key_window(10, windows) == 1.0
    assert origin_calls_per_key_window(80, windows) == 8.0
    assert origin_calls_per_key_window(3, 0) is None


def test_an_ideal_refresh_on_expiry_cache_costs_one_call_per_expiry_of_a_requested_key() -> None:
    from loadtest.workload import ideal_refreshes

    # TTL 5: key 1 read at 0, 4.9 (fresh), 5.0 (expired: call), 12 (call); key 2 at 3.
    trace = [(1, 0.0), (1, 4.9), (2, 3.0), (1, 5.0), (1, 12.0)]
    assert ideal_refreshes(trace, 5.0) == 4
    # Counted from 4 s: the calls at 0 and 3 are warm-up, their values carry over.
    assert ideal_refreshes(trace, 5.0, counted_from=4.0) == 2
