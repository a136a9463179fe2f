"""The fenced blocks of the Markdown docs, and the marker that says how a test runs each command block.

The convention (docs/README.md, "Writing docs", says it for people):

- A shell block (```sh, ```bash, ```shell) is a promise that its commands work, so the line right
  above its fence is a marker, an HTML comment GitHub does not render:

  <!-- doc-test: run -->                 run as is from the checkout's root (bash -euo pipefail,
                                         .venv/bin first on PATH), must exit 0
  <!-- doc-test: stack -->               run against a private stack of this checkout's
                                         namespaces.toml (origin, web, worker, ADMIN_TOKEN set);
                                         127.0.0.1:8000 / :9000 / :9540 become that stack's
                                         web, origin and worker-metrics addresses
  <!-- doc-test: covered-by tests/x.py::test_name -->
  <!-- doc-test: covered-by .ci/run -->  a command that starts a long-running service or runs
                                         for minutes (make run, make loadtest, a benchmark): the
                                         named test runs it (the docs test checks it exists), or
                                         the named file runs it (it must contain every line)

  `run` and `stack` take options: `timeout=120` (seconds, default 90) and any number of
  `expect="text"` (each must appear in the block's output).
- Output, transcripts and illustrations go in ```console or ```text blocks: never run.
- A block with no language whose lines look like commands fails: say ```sh (and mark it) or
  ```text.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELL_LANGUAGES = {"sh", "bash", "shell", "zsh"}
MODES = {"run", "stack", "covered-by"}
DEFAULT_TIMEOUT = 90.0

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")
# What a line of a command starts with, for telling an unlabelled command block from a diagram.
_COMMAND_START = re.compile(r"^\s*(\$ |make |curl |\.venv/|python3? |pip |docker|redis-cli |export |sudo )")


def doc_files() -> list[Path]:
    """Every Markdown page whose commands are promises: the README and docs/ (CHANGELOG.md is
    history, docs/numbers/*/ holds generated reports)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass
class Marker:
    mode: str
    timeout: float = DEFAULT_TIMEOUT
    expect: list[str] = field(default_factory=list)
    test: str = ""  # covered-by: tests/x.py::test_name, or a file that runs the command

    @classmethod
    def parse(cls, body: str) -> Marker:
        words = shlex.split(body)
        if not words or words[0] not in MODES:
            raise ValueError(f"doc-test marker {body!r}: the first word must be one of {sorted(MODES)}")
        marker = cls(words[0])
        rest = words[1:]
        if marker.mode == "covered-by":
            if len(rest) != 1:
                raise ValueError(f"doc-test marker {body!r}: covered-by takes one tests/<file>.py::<test> or file")
            marker.test = rest[0]
            return marker
        for word in rest:
            name, sep, value = word.partition("=")
            if not sep:
                raise ValueError(f"doc-test marker {body!r}: {word!r} is not name=value")
            if name == "timeout":
                marker.timeout = float(value)
            elif name == "expect":
                marker.expect.append(value)
            else:
                raise ValueError(f"doc-test marker {body!r}: unknown option {name!r} (timeout, expect)")
        return marker


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    marker: Marker | None
    marker_error: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.language in SHELL_LANGUAGES

    def looks_like_commands(self) -> bool:
        return any(_COMMAND_START.match(line) for line in self.text.splitlines())


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file, with the doc-test marker of the line above each."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(opening["indent"]) :] if lines[j].startswith(opening["indent"]) else lines[j])
            j += 1
        marker: Marker | None = None
        error = ""
        above = _MARKER.match(lines[i - 1]) if i > 0 else None
        if above:
            try:
                marker = Marker.parse(above["body"])
            except ValueError as exc:
                error = str(exc)
        found.append(Block(path, i + 1, language, "\n".join(body) + "\n", marker, error))
        i = j + 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in blocks(path)]


def stack_addresses(text: str, web: str, origin: str, worker_metrics: str) -> str:
    """The block's text with the default addresses of `make run` replaced by a test stack's."""
    for default, actual in (("8000", web), ("9000", origin), ("9540", worker_metrics)):
        text = re.sub(rf"(127\.0\.0\.1|localhost):{default}\b", actual, text)
    return text
