"""The status page's p99 estimate reads histogram buckets the way Prometheus's histogram_quantile does."""

from __future__ import annotations

import math

import pytest

from web.status import histogram_quantile

INF = math.inf


def test_the_quantile_is_interpolated_inside_the_bucket_that_holds_its_rank() -> None:
    # 100 observations: 50 up to 1 s, 40 more up to 2 s, 10 more up to 5 s. Rank 99 is the 9th of
    # the 10 in (2, 5].
    buckets = [(1.0, 50), (2.0, 90), (5.0, 100), (INF, 100)]
    assert histogram_quantile(0.99, buckets) == pytest.approx(2 + 3 * 9 / 10)
    assert histogram_quantile(0.5, buckets) == pytest.approx(1.0)


def test_the_lowest_bucket_starts_at_zero() -> None:
    assert histogram_quantile(0.5, [(0.1, 10), (INF, 10)]) == pytest.approx(0.05)


def test_a_rank_in_the_inf_bucket_reports_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, [(1.0, 50), (60.0, 90), (INF, 100)]) == 60.0


def test_bucket_order_does_not_matter() -> None:
    buckets = [(INF, 100), (5.0, 100), (1.0, 50), (2.0, 90)]
    assert histogram_quantile(0.99, buckets) == pytest.approx(4.7)


def test_nothing_observed_has_no_quantile() -> None:
    assert histogram_quantile(0.99, [(1.0, 0), (INF, 0)]) is None
    assert histogram_quantile(0.99, []) is None
