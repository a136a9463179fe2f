"""The module structure the design promises: web/ never imports workers/, the engine's halves read
alone, and no import cycles."""

from __future__ import annotations

import ast

from tests.stack import ROOT

PACKAGES = ("shared", "web", "workers")


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            deps: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):  # function-level imports too
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                    deps.add(node.module)
                elif isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
            graph[name] = deps
    return graph


def test_the_web_tier_imports_nothing_from_the_workers() -> None:
    offenders = {
        m: sorted(d) for m, d in _imports().items() if m.startswith("web") and any(x.startswith("workers") for x in d)
    }
    assert not offenders, offenders


def test_shared_imports_neither_tier_nor_flask_nor_celery() -> None:
    graph = _imports()
    assert not {
        m: d for m, d in graph.items() if m.startswith("shared") and any(x.startswith(("web", "workers")) for x in d)
    }
    for path in (ROOT / "shared").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n.split(".")[0] in ("flask", "celery", "kombu") for n in names), (path.name, names)


def test_the_read_path_and_the_refresher_import_neither_each_other_nor_a_tier() -> None:
    # Each half of the engine reads alone: what both need lives in modules of its own.
    graph = _imports()
    assert "shared.refresher" not in graph["shared.readpath"], graph["shared.readpath"]
    assert "shared.readpath" not in graph["shared.refresher"], graph["shared.refresher"]
    assert not any(m.startswith(("web", "workers")) for m in graph["shared.readpath"] | graph["shared.refresher"])


def test_no_engine_module_is_over_450_lines() -> None:
    for name in ("readpath", "refresher", "answers", "origin_adapters"):
        lines = len((ROOT / "shared" / f"{name}.py").read_text().splitlines())
        assert lines <= 450, (name, lines)


def test_there_is_no_import_cycle() -> None:
    graph = _imports()
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph.get(module, ()):
            assert state.get(dep) != 1, " -> ".join([*path, dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
