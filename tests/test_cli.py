"""The CLI as users run it: a real subprocess against a real queue (its output and errors alone are
checked in-process: tests/unit/test_cli_commands.py and test_cli_errors.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cli_env, run_cli
from .unit.test_cli_commands import GRID  # one grid for both tiers


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    return path


def test_status_json_retry_and_cancel_round_trip(tmp_path: Path, grid: Path):
    state = str(tmp_path / "state")
    run_cli("enqueue", str(grid), "--state", state)
    work = run_cli("work", "--state", state, "--no-tracking", "--retry-backoff", "0")
    assert work.returncode == 0, work.stderr

    status = json.loads(run_cli("status", "--json", "--state", state).stdout)
    assert status["schema"].startswith("sweeper.status/")
    assert status["totals"]["done"] == 3 and status["totals"]["failed"] == 1
    failed = status["failed"][0]
    assert failed["stage"] == "bad" and "asked to fail" in failed["error"]

    retried = run_cli("retry", "--failed", "--state", state)
    assert retried.returncode == 0 and "retrying 1 job(s)" in retried.stdout
    cancelled = run_cli("cancel", failed["id"][:6], "--state", state)
    assert cancelled.returncode == 0 and f"cancelled 1 job(s): {failed['id']}" in cancelled.stdout
    status = json.loads(run_cli("status", "--json", "--state", state).stdout)
    assert status["totals"]["cancelled"] == 1


@pytest.mark.parametrize("command", ["enqueue", "status"])
def test_enqueue_and_status_never_import_torch_or_mlflow(tmp_path: Path, grid: Path, command: str):
    state = str(tmp_path / "state")
    run_cli("enqueue", str(grid), "--state", state)
    args = [command, str(grid)] if command == "enqueue" else [command]
    code = (
        "import sys\n"
        "from sweeper.cli import main\n"
        f"sys.argv = ['sweeper', *{args!r}, '--state', {state!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'mlflow', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


# The error messages themselves are checked in-process (tests/unit/test_cli_errors.py); these two
# check that a real process exits with the code main() maps each error to, without a traceback.


def test_a_usage_error_from_a_real_process_exits_2_without_a_traceback(tmp_path: Path):
    proc = run_cli("show", "deadbeef", "--state", str(tmp_path / "state"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.postgres
def test_a_postgres_database_that_does_not_exist_fails_at_once(pg_url: str) -> None:
    import sqlalchemy as sa

    url = sa.make_url(pg_url).set(database="sweeper_no_such_db").render_as_string(hide_password=False)
    proc = run_cli("status", "--db", url)
    text = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 3 and "Traceback" not in text, text
    assert "cannot use database" in text and 'database "sweeper_no_such_db" does not exist' in text, text
