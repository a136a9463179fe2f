"""An origin's answer that is JSON in name only -- nested deeper than the parser recurses -- is the
key's origin error (KeyFault: a cooldown, a 502 for its cold readers), from a single-key origin
as from a batch origin, never an exception that escapes the refresh's failure handling."""

from __future__ import annotations

import time

import pytest

from shared.batch_origin import BatchHttpOrigin
from shared.namespaces import build_namespace
from shared.origin import KeyFault, make_origin
from shared.settings import Settings
from tests.faults.fixture_origin import FixtureOrigin


def test_a_single_key_answer_nested_past_the_parser_is_a_key_fault() -> None:
    with FixtureOrigin() as origin:
        ns = build_namespace("t", {"origin": origin.base_url + "/items/{key}"}, Settings())
        with pytest.raises(KeyFault):
            make_origin(ns, 1 << 20).fetch("deepjson-1")


def test_a_batch_answer_nested_past_the_parser_is_a_key_fault() -> None:
    with FixtureOrigin() as origin:
        options = {"origin": origin.base_url + "/items/{key}", "batch_origin": origin.base_url + "/many?ids={keys}"}
        ns = build_namespace("t", options, Settings())
        with pytest.raises(KeyFault):
            BatchHttpOrigin(ns, 1 << 20).fetch_many(["deepjson-1", "other"], time.monotonic() + 5)
