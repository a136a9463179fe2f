"""Why a refresh failed travels with the key's cooldown, and the worker says it once."""

from __future__ import annotations

import logging

import pytest

from shared.answers import FAILURE_DETAILS, refused_by_failure
from shared.namespaces import build_namespace
from shared.origin_slots import OriginSlots
from shared.refresher import Refresher
from shared.refreshlog import RefreshLog, RefreshReport
from shared.settings import Settings
from shared.store import CacheStore, new_token
from shared.tasks import RefreshRequest


def test_a_callable_that_stopped_importing_fails_the_refresh_as_origin_unimportable(
    settings: Settings, store: CacheStore
) -> None:
    # Start-up imports every callable, so this is a module removed or broken after the start.
    ns = build_namespace("gone", {"origin": "tests.no_such_module_here:compute"}, settings)
    refresher = Refresher(settings, {ns.name: ns}, store, slots=lambda name: OriginSlots(store.redis, name))
    key, token = "k", new_token()
    states, now = store.warm(ns, {key: token})
    assert states[key] == "won"

    report = refresher.run(RefreshRequest(ns.name, key, token, "miss", now))

    assert (report.outcome, report.error) == ("origin_error", "origin_unimportable")
    assert "tests.no_such_module_here" in report.detail and "ModuleNotFoundError" in report.detail
    # The next read finds the cooldown and its reason: the web tier answers with that code.
    read = store.read(ns, key, new_token())
    assert read.lease_state == "cooldown" and read.failure == "origin_unimportable"
    refused = refused_by_failure(read.failure, read.lease_pttl_ms / 1000)
    assert (refused.status, refused.error) == (502, "origin_unimportable")


@pytest.mark.parametrize("reason", sorted(FAILURE_DETAILS))
def test_each_failure_reason_is_read_back_from_the_cooldown(settings: Settings, store: CacheStore, reason: str) -> None:
    ns = build_namespace("r", {"origin": "http://127.0.0.1:9/items/{key}"}, settings)
    key, token = f"cooling-{reason}", new_token()
    store.warm(ns, {key: token})
    store.record_failure(ns, key, token, reason=reason)
    read = store.read(ns, key, new_token())
    assert read.lease_state == "cooldown" and read.failure == reason
    assert refused_by_failure(read.failure, 1).error == reason


def test_a_cooldown_without_a_reason_answers_the_generic_origin_error() -> None:
    # A cooldown written by an older worker ("cd:<token>") carries no reason.
    assert refused_by_failure("", 1).error == "origin_error"
    assert refused_by_failure("something_new", 1).error == "origin_error"


def test_the_refresh_log_says_each_failure_once_and_sums_up_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    log = RefreshLog(interval=3600)
    caplog.set_level(logging.INFO, logger="herdless.refresh")
    for _ in range(3):
        log.record("demo", "k", RefreshReport("written"))
    log.record("demo", "k", RefreshReport("fenced"))
    log.record("demo", "slow", RefreshReport("origin_error", "origin_timeout", "origin o:1: origin timed out after 2s"))
    log.record("demo", "b", RefreshReport("breaker_open", "breaker_open", "circuit breaker open, retry in 900 ms"))

    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refresh of demo/'slow' failed: origin_error (origin_timeout): origin o:1: origin timed out after 2s",
        "refresh of demo/'b' failed: breaker_open: circuit breaker open, retry in 900 ms",
    ]
    summary = log.flush()
    assert summary is not None and summary.endswith(
        "6 refreshes, 3 wrote a value, 2 failed (breaker_open 1, origin_timeout 1), fenced 1"
    )
    assert caplog.records[-1].getMessage() == summary and caplog.records[-1].levelno == logging.INFO
    # Nothing refreshed since: no summary line at all.
    assert log.flush() is None and len(caplog.records) == 3
