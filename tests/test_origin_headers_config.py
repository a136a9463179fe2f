"""Origin request headers in namespaces.toml: filled in from the environment, checked at start,
and never shown — not in a repr, not in an error, which names the variable instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.namespaces import NamespaceConfigError, build_namespace
from shared.origin import HttpOrigin
from shared.settings import Settings
from tests.conftest import namespaces_file
from tests.stack import ROOT

TOKEN = "t0ken-9d2e1f-never-shown"
KEY = "k3y-51ab07-never-shown"
HEADERS = {"Authorization": "Bearer ${HL_TEST_TOKEN}", "X-Api-Key": "${HL_TEST_KEY}"}


def _ns(settings: Settings, headers: object, origin: str = "http://origin.test/items/{key}") -> object:
    return build_namespace("api", {"origin": origin, "headers": headers}, settings)


def test_header_values_come_from_the_environment_and_no_repr_shows_them(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HL_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("HL_TEST_KEY", KEY)
    ns = build_namespace("api", {"origin": "http://origin.test/items/{key}", "headers": HEADERS}, settings)
    assert ns.origin_headers.as_dict() == {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": KEY}
    assert ns.origin_headers.names == ["Authorization", "X-Api-Key"]
    for text in (repr(ns), str(ns), repr(ns.origin_headers), f"{ns.origin_headers}"):
        assert TOKEN not in text and KEY not in text, text
    origin = HttpOrigin(ns, 1024)
    assert origin.headers["Authorization"] == f"Bearer {TOKEN}" and origin.headers["User-Agent"] == "herdless"


@pytest.mark.parametrize(
    ("headers", "env", "message"),
    [
        (HEADERS, {"HL_TEST_KEY": KEY}, "needs the environment variable HL_TEST_TOKEN, which is not set"),
        (HEADERS, {"HL_TEST_TOKEN": "", "HL_TEST_KEY": KEY}, "HL_TEST_TOKEN, which is empty"),
        ({"X-Api-Key": "${HL_TEST_KEY}"}, {"HL_TEST_KEY": KEY + "\r\nX-Evil: 1"}, "holds a control character"),
        ({"Host": "evil.test"}, {}, "header Host is set by herdless"),
        ({"If-None-Match": "*"}, {}, "header If-None-Match is set by herdless"),
        ({"Bad Name": "x"}, {}, "is not a valid HTTP header name"),
        ({"X-A": "x", "x-a": "y"}, {}, "header x-a is given twice"),
        ({"X-A": 5}, {}, "header X-A must be a string"),
        ({"X-A": "${"}, {}, "write variables as ${NAME}"),
        ("Authorization: x", {}, "headers: must be a table"),
    ],
)
def test_a_bad_header_stops_the_namespace_naming_what_is_wrong_but_no_value(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, headers: object, env: dict[str, str], message: str
) -> None:
    monkeypatch.delenv("HL_TEST_TOKEN", raising=False)
    monkeypatch.delenv("HL_TEST_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(NamespaceConfigError) as err:
        _ns(settings, headers)
    assert message in str(err.value)
    assert KEY not in str(err.value) and TOKEN not in str(err.value)


def test_headers_are_refused_on_a_callable_origin(settings: Settings) -> None:
    with pytest.raises(NamespaceConfigError, match="http\\(s\\) origins only"):
        _ns(settings, {"X-A": "x"}, origin="tests.origins:compute")


def test_an_origin_url_with_a_password_keeps_it_out_of_the_origin_label(settings: Settings) -> None:
    ns = build_namespace("api", {"origin": f"http://user:{TOKEN}@origin.test:8080/items/{{key}}"}, settings)
    assert ns.origin_name == "origin.test:8080"


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "workers"],
        [sys.executable, "-c", "from web.app import create_app; create_app()"],
    ],
    ids=["worker", "web"],
)
def test_a_missing_variable_stops_start_up_naming_it(tmp_path: Path, command: list[str]) -> None:
    path = namespaces_file(
        tmp_path,
        """
[namespaces.api]
origin = "http://127.0.0.1:9/items/{key}"
headers = { Authorization = "Bearer ${HL_TEST_TOKEN}", X-Api-Key = "${HL_TEST_KEY}" }
""",
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "NAMESPACES_FILE": str(path),
        "HL_TEST_KEY": KEY,
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "HL_TEST_TOKEN" in output and "which is not set" in output, output[-2000:]
    assert KEY not in output
