"""`--stage` and `--sweep` must name what is in the queue: a typo is exit 2 with "did you mean",
never an empty selection (`work --stage model_serch` used to exit 0 with "queue is empty" while
jobs were pending)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.errors import SweeperError

GRID = "sweep: fmnist\nstages:\n  model_search: {kind: noop, grid: {value: [1, 2]}}\n"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def usage_error(result) -> str:
    """The message and hint of the SweeperError a command raised (main() prints them and exits with its code)."""
    exc = result.exception
    assert isinstance(exc, SweeperError), f"{exc!r}\n{result.output}"
    assert exc.exit_code == 2
    return f"{exc.message} hint: {exc.hint}"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    state = tmp_path / "state"
    assert invoke("enqueue", str(grid), "--state", str(state)).exit_code == 0
    return state


@pytest.mark.parametrize(
    "args",
    [
        ["work", "--stage", "model_serch"],
        ["work", "--stage", "model_search", "--stage", "model_serch"],
        ["export", "--csv", "-", "--stage", "model_serch"],
    ],
    ids=["work", "work-second-stage", "export"],
)
def test_an_unknown_stage_is_exit_2_with_did_you_mean(state: Path, args: list[str]) -> None:
    db = state / "queue.db"
    before = db.read_bytes()
    text = usage_error(invoke(*args, "--state", str(state)))
    assert "no stage named 'model_serch'" in text and "did you mean 'model_search'?" in text
    assert db.read_bytes() == before  # the jobs wait untouched


@pytest.mark.parametrize(
    "args",
    [["work"], ["status"], ["export", "--csv", "-"], ["report", "--out", "unused-dir", "--no-plots"]],
    ids=["work", "status", "export", "report"],
)
def test_an_unknown_sweep_is_exit_2_with_did_you_mean(state: Path, args: list[str], tmp_path: Path) -> None:
    args = [tmp_path / a if a == "unused-dir" else a for a in args]
    text = usage_error(invoke(*map(str, args), "--sweep", "fmnsit", "--state", str(state)))
    assert "no sweep named 'fmnsit'" in text and "did you mean 'fmnist'?" in text
    assert not (tmp_path / "unused-dir").exists()


def test_a_stage_of_another_sweep_is_unknown_within_the_sweep_given(state: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("sweep: other\nstages:\n  train: {kind: noop}\n")
    assert invoke("enqueue", str(other), "--state", str(state)).exit_code == 0
    text = usage_error(invoke("export", "--csv", "-", "--sweep", "fmnist", "--stage", "train", "--state", str(state)))
    assert "no stage named 'train' in sweep 'fmnist'" in text


def test_a_known_stage_and_sweep_select_their_jobs(state: Path) -> None:
    result = invoke("export", "--csv", "-", "--sweep", "fmnist", "--stage", "model_search", "--state", str(state))
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 3  # a header and the two jobs
