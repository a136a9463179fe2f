"""The README's "Your own origin" works as written: its function and its namespace, on a real stack."""

from __future__ import annotations

from pathlib import Path

from tests.docs_blocks import ROOT, blocks
from tests.stack import stack_for


def _section_blocks(heading: str) -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.index("\n## ", start + 1)
    first, last = text[:start].count("\n") + 1, text[:end].count("\n") + 1
    return {b.language: b.text for b in blocks(ROOT / "README.md") if first <= b.line <= last}


def test_the_readmes_own_origin_serves_its_value_from_a_stack(tmp_path: Path) -> None:
    found = _section_blocks("Your own origin")
    assert {"python", "toml", "sh"} <= set(found), found
    assert "PYTHONPATH=. NAMESPACES_FILE=mine.toml make run" in found["sh"]
    code = tmp_path / "code"
    code.mkdir()
    (code / "myorigin.py").write_text(found["python"])
    with stack_for(tmp_path / "stack", found["toml"], {"PYTHONPATH": str(code)}) as stack:
        first = stack.get("prices", "abc")
        assert first.status_code == 200 and first.headers["X-Cache"] == "MISS", first.text
        assert first.json() == {"sku": "abc", "price": 42}
        assert first.headers["Content-Type"].startswith("application/json")
        assert stack.get("prices", "abc").headers["X-Cache"] == "HIT"
