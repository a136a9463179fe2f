"""The protocol's one vocabulary: Lua and Python read markers alike, scripts read the named
arguments their callers send, and the prelude exists once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from shared import breaker, metrics, origin_slots, refresh_scripts, scripts
from shared.protocol import (
    COOLDOWN_PREFIX,
    LUA_HELPERS,
    RUNNING_PREFIX,
    FailureCode,
    LuaArgs,
    RefreshOutcome,
    WarmOutcome,
    WarmState,
    lua_script,
    parse_marker,
)
from shared.refreshlog import RefreshReport
from tests.stack import RedisServer

SHARED = Path(__file__).resolve().parents[1] / "shared"

MARKERS = [
    "a1b2c3",
    "a1b2c3.d4e5f6",
    "cd:a1b2c3.d4e5f6:origin_timeout",
    "cd:a1b2c3:breaker_open",
    "cd:a1b2c3",  # written by a worker from before cooldowns carried their code
    "cd:a1b2c3:a_code_from_a_newer_worker",
    "r:a1b2c3",
    "r:",
    "cd:",
]

# The prelude's reading of one marker: {is_cooldown, cooldown_code, is_running} (Lua false -> nil).
READ_MARKER = lua_script("""
local v = ARGV[1]
return {is_cooldown(v) and 1 or 0, cooldown_code(v), is_running(v) and 1 or 0}
""")


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@pytest.mark.parametrize("value", MARKERS)
def test_lua_and_python_read_a_marker_alike(client: redis.Redis, value: str) -> None:
    is_cooldown, code, is_running = client.eval(READ_MARKER, 0, value)
    marker = parse_marker(value)
    assert bool(is_cooldown) == (marker.cooldown is not None)
    assert bool(is_running) == marker.running
    if marker.cooldown is not None:
        assert FailureCode.parse(code) is marker.cooldown


def test_a_cooldown_the_lua_side_writes_is_the_one_python_reads(client: redis.Redis) -> None:
    for code in FailureCode:
        value = client.eval(lua_script("return cooldown_value(ARGV[1], ARGV[2])"), 0, "tok.en", code)
        assert parse_marker(value) == ("tok.en", code, False)
    value = client.eval(lua_script("return running_value(ARGV[1])"), 0, "tok")
    assert parse_marker(value) == ("tok", None, True)


# Each script with named arguments, and the dataclass its caller builds them from.
NAMED = [
    (refresh_scripts.FENCED_WRITE, refresh_scripts.FencedWriteArgs),
    (refresh_scripts.RECORD_FAILURE, refresh_scripts.RecordFailureArgs),
    (scripts.PLAIN_WRITE, scripts.PlainWriteArgs),
]


@pytest.mark.parametrize(("script", "args"), NAMED, ids=[a.__name__ for _, a in NAMED])
def test_a_script_reads_exactly_the_named_arguments_its_caller_sends(script: str, args: type[LuaArgs]) -> None:
    read = set(re.findall(r"\ba\.(\w+)", script))
    assert read == set(args.names())
    assert "ARGV[" not in script.replace(LUA_HELPERS["named_args"], "")


def _scripts_of(module: object) -> dict[str, str]:
    return {name: text for name, text in vars(module).items() if name.isupper() and isinstance(text, str)}


def test_no_script_takes_more_than_five_positional_arguments_but_the_read() -> None:
    for module in (scripts, refresh_scripts, breaker, origin_slots):
        for name, text in _scripts_of(module).items():
            positions = [int(n) for n in re.findall(r"ARGV\[(\d+)\]", text)]
            if positions and name != "READ":
                assert max(positions) <= 5, name
    assert max(int(n) for n in re.findall(r"ARGV\[(\d+)\]", scripts.READ)) == 6


def test_lua_script_composes_only_the_helpers_a_body_calls_and_theirs_first() -> None:
    text = lua_script("return is_waiting(ARGV[1])")
    assert "local function is_running" in text and "local function is_waiting" in text
    assert text.index("function is_running") < text.index("function is_waiting")
    assert "now_ms" not in text and "named_args" not in text
    assert lua_script("return 1").strip() == "return 1"


def test_the_clock_and_the_marker_prefixes_are_written_in_one_module_only() -> None:
    for path in SHARED.glob("*.py"):
        if path.name == "protocol.py":
            continue
        source = path.read_text()
        assert "redis.call('TIME')" not in source, path.name
        for prefix in (COOLDOWN_PREFIX, RUNNING_PREFIX):  # as a string literal of either language
            assert not re.search(rf"""['"]{prefix}['"]""", source), (path.name, prefix)


def test_every_warm_state_counts_as_one_warm_outcome() -> None:
    assert {state.outcome for state in WarmState} == set(WarmOutcome)


def test_a_refresh_report_refuses_a_word_of_its_own() -> None:
    assert RefreshReport("written").outcome is RefreshOutcome.WRITTEN
    with pytest.raises(ValueError):
        RefreshReport("writen")


def test_the_refresh_metric_has_a_series_for_every_outcome_but_an_unknown_namespace() -> None:
    assert set(metrics.REFRESH_OUTCOMES) == set(RefreshOutcome) - {RefreshOutcome.UNKNOWN_NAMESPACE}
