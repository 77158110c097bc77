"""The README is the front door and docs/ holds the reference: the README stays short, links every
docs page, carries CI's exact test command, and no relative link in either points nowhere.

Links are checked as GitHub renders them: a path relative to the file, and an anchor that is the
slug of a heading in the target (lower case, punctuation dropped, spaces to hyphens).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#{1,6} (.+)$", line)):
            found.add(slug(m.group(1)))
    return found


def test_the_readme_is_at_most_300_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_the_readme_links_every_docs_page():
    linked = {m.split("#")[0] for m in LINK.findall(README.read_text())}
    missing = [p.name for p in PAGES if f"docs/{p.name}" not in linked]
    assert PAGES and not missing, f"README.md does not link {missing}"


def test_each_docs_page_opens_with_a_title_and_a_summary_paragraph():
    for page in PAGES:
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "", page.name
        assert lines[2] and not lines[2].startswith(("#", "```", "|", "- ", "    ")), f"{page.name} has no summary"


def test_the_readme_test_command_is_the_one_ci_runs():
    ci_command = (REPO / ".ci" / "run").read_text().rstrip("\n").splitlines()[-1]
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert ci_command in [b.rstrip("\n") for b in blocks], "README's test command differs from .ci/run's last line"


def test_the_readme_has_no_leftover_comments_or_empty_sections():
    text = README.read_text()
    assert "<!--" not in text
    headings = [m.start() for m in re.finditer(r"^## ", text, re.M)]
    for start, end in zip(headings, [*headings[1:], len(text)], strict=True):
        body = text[start:end].split("\n", 1)[1]
        assert body.strip(), f"empty section: {text[start:end].splitlines()[0]}"


@pytest.mark.parametrize("source", [README, *PAGES, REPO / "BENCHMARKS.md"], ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(source: Path):
    text = re.sub(r"```.*?```", "", source.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (source.parent / path).resolve() if path else source
        missing_anchor = anchor and dest.suffix == ".md" and dest.exists() and anchor not in anchors(dest)
        if not dest.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{source.name}: broken links {broken}"
