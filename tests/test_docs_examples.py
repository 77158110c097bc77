"""Every grid example in the README and docs/ enqueues: a reader who copies one gets jobs, not an error.

Each ```yaml block with a top-level `sweep:` key is written to a file and run through
`sweeper enqueue --dry-run` in-process (nothing is written to any queue).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sweeper.cli import app
from tests.conftest import REPO

BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)


def grid_examples() -> list[tuple[str, str]]:
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            block = match.group(1)
            data = yaml.safe_load(block)
            if isinstance(data, dict) and "sweep" in data:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(REPO)}:{line}", block))
    return found


EXAMPLES = grid_examples()


def test_the_docs_have_grid_examples_to_check():
    # A change to the fence syntax or the page must not quietly empty the test below.
    assert any(where.startswith("docs/grid-files.md") for where, _ in EXAMPLES), EXAMPLES
    assert len(EXAMPLES) >= 2, EXAMPLES


@pytest.mark.parametrize(("where", "block"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_grid_example_in_the_docs_enqueues(where: str, block: str, tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(block)
    result = CliRunner().invoke(app, ["enqueue", str(grid), "--dry-run", "--state", str(tmp_path / "state")])
    problem = getattr(result.exception, "message", None) or repr(result.exception)
    hint = getattr(result.exception, "hint", None)
    assert result.exit_code == 0, f"{where}: {problem} (hint: {hint})\n{result.output}"
    assert "would add" in result.output, result.output
    assert not (tmp_path / "state" / "queue.db").exists()  # a dry run writes nothing
