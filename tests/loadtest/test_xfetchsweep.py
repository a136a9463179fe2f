"""The early-refresh sweep's parts that need no stack: its rules and where their stacks run."""

from __future__ import annotations

from pathlib import Path

import pytest

import launcher.processes
from loadtest.xfetchsweep import WORKLOADS, Rule, parse_rules, stacks_from, table


def test_rules_are_betas_here_or_in_the_baseline_checkout(tmp_path: Path) -> None:
    assert parse_rules("1.5, 2,prev:4", tmp_path) == [
        Rule("1.5", 1.5, None),
        Rule("2", 2.0, None),
        Rule("prev:4", 4.0, tmp_path),
    ]


def test_a_previous_release_rule_without_a_baseline_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match="prev:4 needs --baseline"):
        parse_rules("2,prev:4", None)
    with pytest.raises(SystemExit, match="beta must be >= 0"):
        parse_rules("-1", None)


def test_a_baseline_rules_stack_runs_in_its_checkout_and_the_next_one_here_again(tmp_path: Path) -> None:
    here = launcher.processes.ROOT
    with stacks_from(tmp_path):
        assert launcher.processes.ROOT == tmp_path.resolve()
    assert launcher.processes.ROOT == here
    with stacks_from(None):
        assert launcher.processes.ROOT == here


def test_the_three_workloads_are_the_issues_rows() -> None:
    one, hot, slow = WORKLOADS["one-key"], WORKLOADS["zipf-1.1"], WORKLOADS["zipf-0.8"]
    assert (one.rate, one.keys, one.ttl, one.origin_ms, one.duration) == (500, 1, 2, 300, 12)
    assert (hot.rate, hot.keys, hot.zipf, hot.ttl, hot.origin_ms) == (1000, 1000, 1.1, 5, 100)
    assert (slow.rate, slow.keys, slow.zipf, slow.ttl, slow.origin_ms, slow.duration) == (100, 500, 0.8, 30, 1000, 120)
    assert slow.hot_rps == 1


def test_the_table_prints_missing_figures_as_na() -> None:
    row = {
        "workload": "one-key",
        "rule": "2",
        "round": 1,
        "calls_per_window": 1.1667,
        "calls_per_ideal": None,
        "not_stale": 0.999,
        "early_share": 0.1,
        "hot_fresh": None,
        "hot_keys": 0,
        "p99_ms": 12.34,
        "errors": 0,
        "worker_saturated": None,
    }
    last = table([row]).splitlines()[-1].split()
    assert last == ["one-key", "2", "1", "1.167", "n/a", "99.9%", "10.0%", "n/a", "0", "12.3", "0", "n/a"]
