"""Every variable herdless reads is in docs/configuration.md's environment tables and in .env.example."""

from __future__ import annotations

import re

from shared.settings import Settings
from tests.docs_blocks import ROOT

CONFIGURATION = ROOT / "docs" / "configuration.md"
# What `make run` reads from its environment beside the settings every process reads.
LAUNCHER = ROOT / "scripts" / "run_stack.py"
_READ = re.compile(r"""env(?:iron)?(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]+)["']""")
_OWN = {"PATH", "PYTHONUNBUFFERED"}  # the launcher's own plumbing, no user's setting


def variables_read() -> set[str]:
    settings = {name.upper() for name in Settings.model_fields}
    launcher = set(_READ.findall(LAUNCHER.read_text())) - _OWN
    return settings | launcher


def documented_in_tables() -> set[str]:
    """The variables named in the first column of the page's tables (`A` / `B` rows count each)."""
    names: set[str] = set()
    for line in CONFIGURATION.read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def in_env_example() -> set[str]:
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))


def test_the_launchers_reads_are_found_so_the_check_checks_something() -> None:
    assert {"FLOWER_PORT", "FLOWER_BASIC_AUTH", "ENV_FILE"} <= variables_read()
    assert {"REDIS_URL", "ADMIN_TOKEN", "XFETCH_BETA"} <= variables_read()


def test_every_variable_read_is_in_the_environment_table() -> None:
    missing = sorted(variables_read() - documented_in_tables())
    assert not missing, f"not in docs/configuration.md's environment table: {missing}"


def test_every_variable_read_is_in_env_example() -> None:
    missing = sorted(variables_read() - in_env_example())
    assert not missing, f"not in .env.example (a commented `# NAME=value` line counts): {missing}"


def test_the_table_names_no_variable_nothing_reads() -> None:
    compose = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
    stale = sorted(documented_in_tables() - variables_read() - compose)
    assert not stale, f"docs/configuration.md documents variables nothing reads: {stale}"
