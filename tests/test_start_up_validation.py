"""A namespace that cannot work stops every entry point at start, with one line that says why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shared.namespaces import NamespaceConfigError, load_namespaces
from shared.settings import Settings
from tests.stack import PYTHON, ROOT, free_port

UNIMPORTABLE = """
[namespaces.demo]
origin = "http://127.0.0.1:9/items/{key}"

[namespaces.reports]
origin = "myapp_not_installed.reports:build_report"
"""

# What scripts/run.sh runs before anything else (it is not ours to change: the line must come
# out right from the library itself).
RUN_SH_CHECK = (
    "from shared.settings import load_settings; from shared.namespaces import load_namespaces; "
    "load_namespaces(load_settings())"
)

ENTRY_POINTS = {
    "web": [PYTHON, "-m", "gunicorn", "-c", "web/gunicorn.conf.py", "web.app:create_app()"],
    "worker": [PYTHON, "-m", "workers"],
    "run.sh check": [PYTHON, "-c", RUN_SH_CHECK],
}


def start(args: list[str], namespaces: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": "/usr/bin:/bin",
        "NAMESPACES_FILE": str(namespaces),
        "WEB_PORT": str(free_port()),
        "WORKER_METRICS_PORT": str(free_port()),
        # Nothing may be reached: the process must stop before it needs Redis or a broker.
        "REDIS_URL": "redis://127.0.0.1:9/0",
        **env,
    }
    return subprocess.run(args, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)


def only_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, (proc.returncode, proc.stdout, proc.stderr)
    return lines[0]


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_an_unimportable_callable_origin_stops_start_up_naming_the_namespace_and_module(
    tmp_path: Path, entry_point: str
) -> None:
    path = tmp_path / "namespaces.toml"
    path.write_text(UNIMPORTABLE)
    line = only_line(start(ENTRY_POINTS[entry_point], path))
    assert "[namespaces.reports] origin" in line and "myapp_not_installed" in line, line
    assert "No module named 'myapp_not_installed'" in line and "PYTHONPATH" in line, line


def test_the_callable_imports_once_its_directory_is_on_pythonpath(tmp_path: Path) -> None:
    package = tmp_path / "code" / "myapp_not_installed"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "reports.py").write_text("def build_report(key):\n    return key\n")
    path = tmp_path / "namespaces.toml"
    path.write_text(UNIMPORTABLE)
    proc = start(ENTRY_POINTS["run.sh check"], path, PYTHONPATH=str(tmp_path / "code"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ('[namespaces.demo]\norigin = "http://o/{key}"\nxfetch_beta = inf\n', ["[namespaces.demo] xfetch_beta", "inf"]),
        ('[namespaces.demo]\norigin = "http://o/{key}"\nxfetch_beta = nan\n', ["[namespaces.demo] xfetch_beta"]),
        ('[namespaces.demo]\norigin = "http://o/{key}"\ncache_ttl_seconds = -1\n', ["cache_ttl_seconds", "-1"]),
        ('[namespaces.demo]\norigin = "http://o/{key}"\nmax_ttl_seconds = inf\n', ["max_ttl_seconds"]),
        ('[namespaces.demo]\norigin = "http://o/{key}"\nttl = 5\n', ["[namespaces.demo] ttl", "unknown option"]),
        ('[namespaces.demo]\norigin = "ftp://o/{key}"\n', ["[namespaces.demo] origin"]),
        ("[namespaces.demo]\nstrategy = 'xfetch'\n", ["[namespaces.demo] origin", "is required"]),
        ("[namespaces.demo\n", ["is not valid TOML", "line 1"]),
    ],
)
def test_a_bad_namespaces_file_is_one_line_naming_the_file_the_table_and_the_field(
    tmp_path: Path, body: str, names: list[str]
) -> None:
    path = tmp_path / "namespaces.toml"
    path.write_text(body)
    line = only_line(start(ENTRY_POINTS["run.sh check"], path))
    assert line.startswith(f"herdless: NAMESPACES_FILE '{path}'"), line
    for name in names:
        assert name in line, line
    # The same line from the library, for whoever calls it (the web tier and the worker do).
    with pytest.raises(NamespaceConfigError) as err:
        load_namespaces(Settings(namespaces_file=path))
    assert str(err.value) == line


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1"])
def test_a_non_finite_or_negative_xfetch_beta_is_refused_by_name(tmp_path: Path, value: str) -> None:
    proc = start(ENTRY_POINTS["run.sh check"], ROOT / "namespaces.toml", XFETCH_BETA=value)
    assert proc.returncode == 2, proc.stderr
    assert f"XFETCH_BETA='{value}'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_an_admin_token_shorter_than_32_characters_stops_start_up_naming_the_variable(
    tmp_path: Path, entry_point: str
) -> None:
    path = tmp_path / "namespaces.toml"
    path.write_text('[namespaces.demo]\norigin = "http://127.0.0.1:9/items/{key}"\n')
    short = "a" * 31
    proc = start(ENTRY_POINTS[entry_point], path, ADMIN_TOKEN=short)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "ADMIN_TOKEN" in output and "at least 32 characters" in output, output
    assert short not in output  # the token itself is never shown
    assert Settings(admin_token="b" * 32).admin_token == "b" * 32
    assert Settings(admin_token="").admin_token is None  # empty: the admin API is off
