"""`sweeper work GRID`: enqueue (idempotently), then work; the one command of a notebook cell that
is run again after every disconnect."""

from __future__ import annotations

from .conftest import run_cli

GRID = "sweep: wg\nstages:\n  s:\n    kind: noop\n    grid:\n      value: [1, 2]\n"


def test_work_with_a_grid_enqueues_then_runs_and_is_idempotent(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID)
    state = str(tmp_path / "state")
    first = run_cli("work", str(grid), "--state", state, "--no-tracking")
    assert first.returncode == 0, first.stderr
    assert "added 2 new job(s)" in first.stdout and first.stderr.count(" done ") == 2, first.stdout + first.stderr
    again = run_cli("work", str(grid), "--state", state, "--no-tracking")
    assert again.returncode == 0 and "added 0 new job(s), 2 unchanged" in again.stdout, again.stderr
    assert " done " not in again.stderr  # nothing ran twice


def test_work_with_a_bad_grid_fails_before_touching_the_queue(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID.replace("kind: noop", "kind: nosuchkind"))
    done = run_cli("work", str(grid), "--state", str(tmp_path / "state"), "--no-tracking")
    assert done.returncode == 2 and "nosuchkind" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "state" / "queue.db").exists()
