"""The CLI's commands and their output, in this process (clirun.py): enqueue's diff, dry runs,
retry's usage error, the environment variables, --help. Running jobs through the CLI, and what
needs a real process (imports, exit codes), is in tests/test_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .clirun import sweeper as run_cli

GRID = """
sweep: cli
stages:
  ok: {kind: noop, grid: {value: [1, 2]}, params: {checkpoint: false}}
  bad: {kind: noop, params: {fail: true, checkpoint: false}, max_failures: 1}
  later: {kind: noop, needs: [ok], params: {checkpoint: false}}
"""


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    return path


def test_dry_run_lists_jobs_and_writes_nothing(tmp_path: Path, grid: Path):
    proc = run_cli("enqueue", str(grid), "--dry-run", "--state", str(tmp_path / "state"))
    assert proc.code == 0, proc.stderr
    assert "would add 4 new job(s)" in proc.stdout
    assert proc.stdout.count("new ") >= 4
    assert not (tmp_path / "state").exists()


def test_enqueue_prints_the_difference(tmp_path: Path, grid: Path):
    state = str(tmp_path / "state")
    assert "added 4 new job(s), 0 unchanged" in run_cli("enqueue", str(grid), "--state", state).stdout
    grid.write_text(GRID.replace("[1, 2]", "[2, 3]"))
    out = run_cli("enqueue", str(grid), "--state", state).stdout
    assert "added 1 new job(s), 3 unchanged, 1 no longer in the file (left alone)" in out
    assert "not in file (pending)" in out


def test_enqueue_says_when_an_edit_changes_priorities(tmp_path: Path, grid: Path):
    state = str(tmp_path / "state")
    run_cli("enqueue", str(grid), "--state", state)
    grid.write_text(GRID.replace("later: {kind: noop,", "later: {kind: noop, priority: 3,"))
    dry = run_cli("enqueue", str(grid), "--state", state, "--dry-run").stdout
    assert "would change the priority of 1 job(s) not started yet" in dry and "priority 0 -> 3" in dry
    out = run_cli("enqueue", str(grid), "--state", state).stdout
    assert "added 0 new job(s), 4 unchanged" in out and "changed the priority of 1 job(s)" in out
    assert "changed the priority" not in run_cli("enqueue", str(grid), "--state", state).stdout


def test_retry_without_a_selection_is_a_usage_error(tmp_path: Path, grid: Path):
    state = str(tmp_path / "state")
    run_cli("enqueue", str(grid), "--state", state)
    proc = run_cli("retry", "--state", state)
    assert proc.code == 2 and "say which jobs to retry" in proc.stderr


def test_environment_variables_choose_the_queue(tmp_path: Path, grid: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # the default ./state is under the test's directory, not the repository
    db = tmp_path / "elsewhere" / "q.db"
    proc = run_cli("enqueue", str(grid), SWEEPER_DB=f"sqlite:///{db}")
    assert proc.code == 0, proc.stderr
    assert db.exists()
    status = json.loads(run_cli("status", "--json", SWEEPER_DB=f"sqlite:///{db}").stdout)
    assert sum(status["totals"].values()) == 4


def test_help_explains_every_command():
    proc = run_cli("--help")
    for command in ("enqueue", "work", "status", "retry", "cancel"):
        assert command in proc.stdout
    work = run_cli("work", "--help").stdout
    assert "--lease-ttl" in work and "--threads-per-worker" in work and "Ctrl-C" in work
