"""Every relative link in README.md and docs/ points at a file or folder of the repository, and
every #anchor at a heading of its target page (GitHub's heading ids)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks."""
    lines, in_code = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(line)
    return lines


def heading_id(title: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped (hyphens and underscores
    kept), spaces to hyphens."""
    title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Ids of the page's headings, with GitHub's -1, -2 ... suffixes for repeated ones."""
    seen: dict[str, int] = {}
    ids = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = heading_id(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.add(base if count == 0 else f"{base}-{count}")
    return ids


def relative_links(page: Path) -> list[str]:
    links = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # skip https:, mailto: ...
                links.append(target)
    return links


def test_heading_ids_follow_github():
    assert heading_id("Where the photometric augmentation runs: `data.photometric`") == (
        "where-the-photometric-augmentation-runs-dataphotometric")
    assert heading_id("k-NN (`dino eval knn`)") == "k-nn-dino-eval-knn"
    assert heading_id("CIFAR-10 figures") == "cifar-10-figures"


def test_link_scanner_sees_links_outside_code_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[a](b.md#c) ![img](fig.png) [web](https://example.org)\n"
                    "```\n[not](in-code.md)\n```\n## Title\n", encoding="utf-8")
    assert relative_links(page) == ["b.md#c", "fig.png"]
    assert anchors(page) == {"title", "title-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    broken = []
    for link in relative_links(page):
        path_part, _, anchor = link.partition("#")
        target = (page.parent / path_part).resolve() if path_part else page
        if not target.exists() or REPO not in (target, *target.parents):
            broken.append(f"{link}: no such file in the repository")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_docs_are_found():
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    assert {"README.md", "docs/training.md", "docs/architecture.md"} <= names


TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_tests_exist(page):
    """A claim that names the test proving it names a test that exists."""
    missing = []
    for path, name in TEST_REFERENCE.findall(page.read_text()):
        target = REPO / path
        if not target.is_file():
            missing.append(path)
        elif name and not re.search(rf"^def {name}\b", target.read_text(), re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert not missing, f"{page.name} names tests that do not exist: {missing}"
