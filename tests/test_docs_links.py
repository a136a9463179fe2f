"""Every relative link in README.md and docs/ leads somewhere: the file exists, the #anchor is a heading of it."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docs_blocks import ROOT, doc_files

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def links(path: Path) -> list[str]:
    fenced = False
    out: list[str] = []
    for line in path.read_text().splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.extend(_LINK.findall(line))
    return out


def test_every_relative_link_names_a_file_and_heading_that_exist() -> None:
    broken = []
    for page in [*doc_files(), ROOT / "CHANGELOG.md"]:
        if not page.exists():
            continue
        for target in links(page):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_slugs_follow_githubs_rule() -> None:
    assert slug(' Origin-driven freshness (`freshness = "origin"`)') == "origin-driven-freshness-freshness--origin"
    assert slug("Refresh capacity: 2 000 never-seen keys at once") == "refresh-capacity-2-000-never-seen-keys-at-once"
