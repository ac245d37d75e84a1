"""The docs stay navigable: links resolve, the README stays a front door, and the
configuration reference lists every variable the settings parse.

Docs rot silently (a renamed heading breaks every link to it; a new variable goes
undocumented), so these read the files as text and fail with the file and the link.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 250

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`]*`")
EXTERNAL = ("http://", "https://", "mailto:")
VARIABLE = re.compile(r"\b((?:GATEWAY|DATABASE)_[A-Z0-9_]*[A-Z0-9])\b")
PARSED_VARIABLE = re.compile(r"[\"']((?:GATEWAY|DATABASE)_[A-Z0-9_]+)[\"']")  # the names read


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks: a link or heading inside one is an example."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces → hyphens."""
    text = heading.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page offers, with GitHub's -1, -2 … suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in _prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """Relative link targets in a page's prose (inline code spans are not links)."""
    targets = []
    for line in _prose_lines(path.read_text()):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not target.startswith(EXTERNAL):
                targets.append(target)
    return targets


def broken_links(path: Path) -> list[str]:
    """``path``'s relative links whose file, or whose heading in a markdown file, is missing."""
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no heading #{anchor} in {destination.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_is_a_front_door_of_at_most_250_lines() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference "
        "material to docs/ and link to it"
    )


def test_the_readme_links_every_page_in_docs() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


def test_every_variable_the_settings_parse_is_documented() -> None:
    parsed = set(PARSED_VARIABLE.findall((ROOT / "gateway" / "settings.py").read_text()))
    documented = set(VARIABLE.findall((ROOT / "docs" / "configuration.md").read_text()))
    assert sorted(parsed - documented) == [], "add them to docs/configuration.md"
    assert sorted(documented - parsed) == [], "docs/configuration.md names unknown variables"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading, with commas\n")
    page.write_text(
        "# Title\n\n"
        "[ok](other.md) [ok](other.md#a-code-heading-with-commas) [ok](#title)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [bad here](#nothing)\n"
        "`[not a link](missing.md)`\n"
        "```\n[an example](missing.md)\n```\n"
        "[web](https://example.com/missing.md)\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#nowhere (no heading #nowhere in other.md)",
        "#nothing (no heading #nothing in page.md)",
    ]
    assert anchors(tmp_path / "other.md") == {"other-page", "a-code-heading-with-commas"}
