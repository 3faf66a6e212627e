"""README.md and docs/: every relative link resolves (file and, for markdown, heading anchor), the README stays a
short first read with a table of contents, and its first two code blocks are the install and test commands that
CI (.ci/run) runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

INSTALL = ('python3 -m venv .venv && . .venv/bin/activate && pip install -c requirements.lock -e ".[dev]" '
           '&& dvc repro -f')
TEST = ". .venv/bin/activate && pytest"
MAX_README_LINES = 395  # 260 before the coverage and trade-off tables (issue 27) and the sequential figures (issue 29)

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def code_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks, in order."""
    blocks, current = [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings_raw(path: Path) -> list[str]:
    """The raw text of each heading outside code blocks."""
    heads, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            heads.append(match.group(2))
    return heads


def anchor_set(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeated headings numbered as GitHub does (-1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in headings_raw(path):
        base = slug(heading)
        if base in seen:
            seen[base] += 1
            out.add(f"{base}-{seen[base]}")
        else:
            seen[base] = 0
            out.add(base)
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every markdown link and image outside code blocks and inline code spans."""
    found, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        spans = [m.span() for m in re.finditer(r"`[^`]*`", line)]
        found += [(number, m.group(1)) for m in LINK.finditer(line)
                  if not any(lo < m.start() < hi for lo, hi in spans)]
    return found


def test_slug_follows_github():
    assert slug("What `dvc repro` produces") == "what-dvc-repro-produces"
    assert slug("Throughput: `python -m harness.bench`") == "throughput-python--m-harnessbench"
    assert slug("A preset's point") == "a-presets-point"
    assert slug("torch.compile") == "torchcompile"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no such file)")
            continue
        if not str(resolved).startswith(str(ROOT)):
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (outside the repository)")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchor_set(resolved):
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no heading with anchor #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_doc_page_has_links_checked():
    assert DOCS, "docs/ holds no pages"
    assert all(links(page) for page in DOCS), "a docs page links nowhere (not even back to the README)"


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move the details into a docs/ page")


def test_readme_first_code_blocks_are_the_install_and_test_commands():
    blocks = code_blocks(README.read_text())
    assert len(blocks) >= 2
    assert blocks[0].strip() == INSTALL
    assert blocks[1].strip() == TEST


def test_readme_has_a_table_of_contents_linking_sections_and_every_docs_page():
    lines = README.read_text().splitlines()
    heads = [(i, m.group(1), m.group(2)) for i, m in ((i, HEADING.match(line)) for i, line in enumerate(lines)) if m]
    start = next((i for i, _, text in heads if text == "Contents"), None)
    assert start is not None and start < 30, "README.md has no '## Contents' near the top"
    end = next((i for i, _, _ in heads if i > start), len(lines))
    targets = [m.group(1) for m in LINK.finditer("\n".join(lines[start:end]))]
    sections = {t[1:] for t in targets if t.startswith("#")}
    assert sections <= anchor_set(README), f"contents link to no heading: {sorted(sections - anchor_set(README))}"
    top_level = {slug(text) for i, level, text in heads if level == "##" and text != "Contents"}
    assert top_level <= sections, f"sections missing from the contents: {sorted(top_level - sections)}"
    linked_docs = {Path(t.partition("#")[0]).name for t in targets if t.startswith("docs/")}
    missing = sorted({p.name for p in DOCS} - linked_docs)
    assert not missing, f"docs pages missing from the contents: {missing}"
