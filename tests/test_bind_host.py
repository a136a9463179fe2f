"""BIND_HOST: every server of the stack listens on loopback unless told otherwise, and a bad
value stops a process at start naming the variable."""

from __future__ import annotations

import pytest

from shared.settings import Settings, SettingsError, load_settings, reachable_host


def test_the_default_is_loopback_and_gunicorn_binds_it_with_web_port() -> None:
    settings = Settings(web_port=8123)
    assert settings.bind_host == "127.0.0.1"
    assert settings.web_bind == "127.0.0.1:8123"


def test_an_ipv6_address_is_bracketed_for_gunicorn_and_all_interfaces_are_reached_on_loopback() -> None:
    assert Settings(bind_host="::", web_port=8000).web_bind == "[::]:8000"
    assert Settings(bind_host="::1", web_bind="unix:/tmp/web.sock").web_bind == "unix:/tmp/web.sock"
    assert reachable_host("0.0.0.0") == "127.0.0.1" and reachable_host("::") == "::1"
    assert Settings(bind_host="localhost").bind_host == "localhost"


def test_a_bad_bind_host_stops_the_process_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BIND_HOST", "0.0.0.0:8000")
    with pytest.raises(SettingsError):
        load_settings()
    assert "BIND_HOST='0.0.0.0:8000': Value error, BIND_HOST must be an IP address" in capsys.readouterr().err
