"""The processes of a stack: their commands, read from the Procfile, and the environment they get."""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from launcher.processes import ROOT

PROCFILE = ROOT / "Procfile"


def procfile(path: Path = PROCFILE) -> dict[str, list[str]]:
    """Each role's command line, in the file's order: the one list of what a stack runs, which
    `make run`, the tests' stacks, the load tester's stacks and Procfile tools (honcho) all follow."""
    commands: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            commands[name.strip()] = shlex.split(command)
    return commands


def command(role: str, *extra: str) -> list[str]:
    """The Procfile's command of `role` with `extra` arguments, run by this interpreter: `python`
    is sys.executable, and the console scripts (gunicorn, celery) come first from its directory
    (environment() puts that directory first on PATH)."""
    argv = [sys.executable if word == "python" else word for word in procfile()[role]]
    return [*argv, *extra]


def checkout_prefix(checkout: Path) -> str:
    """The HERDLESS_PREFIX `make run` gives a checkout that sets none: one of its own per path, so
    that two clones on one Redis (the default 127.0.0.1:6379/0) share no key, channel or queue."""
    digest = hashlib.sha256(str(checkout.resolve()).encode()).hexdigest()[:8]
    return f"hl-{digest}"


def environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` as every process of a stack gets it: this interpreter's directory first on PATH (its
    gunicorn and celery, not another install's) and unbuffered output (lines arrive as logged)."""
    env = dict(base)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
    env["PYTHONUNBUFFERED"] = "1"
    return env
