"""Every command in README.md and docs/*.md works: each shell block is run, or names the test that runs it.

The marker grammar is in tests/docs_blocks.py; docs/README.md ("Writing docs") says it for people."""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs_blocks import ROOT, Block, all_blocks, blocks, doc_files, stack_addresses
from tests.stack import Stack

ADMIN_TOKEN = "doc-test-admin-token-0123456789abcdefghij"
DOCS = [path.relative_to(ROOT).as_posix() for path in doc_files()]


def _shell(block: Block, text: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", text],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=block.marker.timeout if block.marker else None,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.where}: still running after {exc.timeout} s (mark it covered-by a test?)\n{text}")


def _check(block: Block, text: str, proc: subprocess.CompletedProcess[str]) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{block.where}: exit {proc.returncode}\n$ {text}\n{output[-3000:]}"
    assert block.marker is not None
    for expected in block.marker.expect:
        assert expected in output, f"{block.where}: {expected!r} not in the output\n$ {text}\n{output[-3000:]}"


def _environment(**more: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(more)
    return env


def _test_exists(target: str) -> bool:
    file, _, name = target.partition("::")
    path = ROOT / file
    if not path.is_file():
        return False
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in ast.walk(tree))


def test_every_shell_block_says_how_a_test_runs_it() -> None:
    problems = []
    for block in all_blocks():
        if block.marker_error:
            problems.append(f"{block.where}: {block.marker_error}")
        elif block.is_shell and block.marker is None:
            problems.append(
                f"{block.where}: ```{block.language} block without a <!-- doc-test: run|stack|covered-by ... --> "
                "line above it (output belongs in ```console or ```text)"
            )
        elif not block.is_shell and block.marker is not None:
            problems.append(f"{block.where}: a doc-test marker above a ```{block.language or '(none)'} block")
        elif not block.language and block.looks_like_commands():
            problems.append(f"{block.where}: a block without a language holds commands: make it ```sh (marked)")
        elif block.marker is not None and block.marker.mode == "stack" and not block.marker.expect:
            problems.append(f'{block.where}: a stack block says what it expects (expect="...")')
    assert not problems, "\n".join(problems)


def test_every_covered_by_names_a_test_or_a_file_that_runs_the_command() -> None:
    problems = []
    for block in all_blocks():
        if block.marker is None or block.marker.mode != "covered-by":
            continue
        target = block.marker.test
        if "::" in target:
            if not _test_exists(target):
                problems.append(f"{block.where}: covered-by {target}: no such test")
            continue
        path = ROOT / target
        if not path.is_file():
            problems.append(f"{block.where}: covered-by {target}: no such file")
            continue
        content = path.read_text()
        for line in block.text.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith("#") and command not in content:
                problems.append(f"{block.where}: covered-by {target}, which does not run {command!r}")
    assert not problems, "\n".join(problems)


def test_the_marker_grammar_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- doc-test: runn -->\n```sh\ntrue\n```\n\n```sh\ntrue\n```\n\n"
        '<!-- doc-test: stack expect="X-Cache: HIT" timeout=5 -->\n```sh\ncurl http://127.0.0.1:8000/\n```\n\n'
        "```\nmake run\n```\n"
    )
    first, second, third, fourth = blocks(page)
    assert "first word" in first.marker_error
    assert second.marker is None and second.is_shell
    assert third.marker is not None and third.marker.expect == ["X-Cache: HIT"] and third.marker.timeout == 5
    assert stack_addresses(third.text, "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3") == "curl http://127.0.0.1:1/\n"
    assert fourth.language == "" and fourth.looks_like_commands()


@pytest.mark.parametrize("doc", DOCS)
def test_the_run_blocks_of_each_page_exit_0(doc: str) -> None:
    for block in blocks(ROOT / doc):
        if block.marker is not None and block.marker.mode == "run":
            _check(block, block.text, _shell(block, block.text, _environment()))


@pytest.mark.parametrize("doc", DOCS)
def test_the_stack_blocks_of_each_page_work_against_a_stack_in_page_order(doc: str, tmp_path: Path) -> None:
    """One private stack per page, of this checkout's namespaces.toml: the page's blocks run in
    order (a MISS then a HIT), as a reader would run them against `make run`."""
    todo = [b for b in blocks(ROOT / doc) if b.marker is not None and b.marker.mode == "stack"]
    if not todo:
        return
    with Stack(tmp_path, env={"ADMIN_TOKEN": ADMIN_TOKEN}) as stack:
        web = f"127.0.0.1:{stack.web_port}"
        origin = f"127.0.0.1:{stack.origin_port}"
        metrics = f"127.0.0.1:{stack.worker_metrics_ports[stack.first_worker]}"
        env = _environment(ADMIN_TOKEN=ADMIN_TOKEN, WEB_PORT=str(stack.web_port), REDIS_URL=stack.redis_url)
        for block in todo:
            text = stack_addresses(block.text, web, origin, metrics)
            _check(block, text, _shell(block, text, env))


def _command_lines(text: str) -> list[str]:
    """The block's commands: continuation lines joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_every_benchmark_command_in_the_docs_parses() -> None:
    """The benchmarks behind docs/numbers.md run for minutes each, so the suite does not run them
    as written (tests/loadtest/ runs each bench short); what rots in a doc is a flag or a setting,
    so every such command must parse: a loadtest command by loadtest's own parser, the settings
    in front of a `make run` as Settings fields."""
    from loadtest.__main__ import build_parser
    from shared.settings import Settings

    me = f"tests/test_docs_commands.py::{test_every_benchmark_command_in_the_docs_parses.__name__}"
    known = {name.upper() for name in Settings.model_fields}
    checked = 0
    for block in all_blocks():
        if block.marker is None or block.marker.test != me:
            continue
        for command in _command_lines(block.text):
            words = shlex.split(command)
            settings = [w.partition("=")[0] for w in words if "=" in w and w.partition("=")[0].isupper()]
            rest = words[len(settings) :]
            assert all(s in known for s in settings), f"{block.where}: unknown setting in {command!r}"
            if rest[:2] == ["make", "run"]:
                continue
            assert rest[1:3] == ["-m", "loadtest"] and rest[0] in (".venv/bin/python", "python"), (
                f"{block.where}: not a loadtest command: {command!r}"
            )
            try:
                build_parser().parse_args(rest[3:])
            except SystemExit:
                pytest.fail(f"{block.where}: loadtest refuses {command!r}")
            checked += 1
    assert checked, "no benchmark command found: is the marker's test name right?"
