"""Bad command-line input gets one clear error and the right exit code, never a traceback.

Exit codes: 2 for bad input (an option, a job id, a URL, a path), 3 for a database that cannot be
used or does not answer. Grid-file errors are covered by tests/test_spec.py and the fuzzer
(tests/test_fuzz_grid.py); a database that goes away under a worker by tests/test_db_outage.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_cli

GRID = "sweep: s\nstages:\n  a: {kind: noop, grid: {value: [1, 2]}}\n"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    path = tmp_path / "state"
    proc = run_cli("enqueue", str(grid), "--state", str(path))
    assert proc.returncode == 0, proc.stderr
    return path


def check(proc, code: int, *needles: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    assert "Traceback" not in text, text
    flat = " ".join(text.split())  # rich wraps long lines
    for needle in needles:
        assert needle in flat, text


@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_an_unknown_job_id_is_a_clear_usage_error(state: Path, command: str) -> None:
    check(run_cli(command, "deadbeef", "--state", str(state)), 2, "no job with id 'deadbeef'", "sweeper status")


def test_a_job_id_prefix_too_short_to_be_unique_is_refused(state: Path) -> None:
    check(run_cli("show", "ab", "--state", str(state)), 2, "too short", "at least 4 characters")


@pytest.mark.parametrize(
    "url, code, needle",
    [
        ("not a url", 2, "not a database URL"),
        ("mysql://user@localhost/db", 2, "unsupported database 'mysql'"),
        ("sqlite:////proc/no/such/dir/queue.db", 2, "cannot create the directory of the queue database"),
    ],
)
def test_a_bad_db_url_is_a_clear_error(tmp_path: Path, url: str, code: int, needle: str) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    for args in (("status",), ("enqueue", str(grid)), ("work", "--no-tracking")):
        check(run_cli(*args, "--db", url, "--state", str(tmp_path / "state")), code, needle)


def test_a_state_directory_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("a file, not a directory")
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    check(run_cli("enqueue", str(grid), "--state", str(not_a_dir)), 2, "cannot create the directory")


def test_a_file_that_is_not_a_queue_database_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "queue.db"
    garbage.write_bytes(b"this is not an SQLite file" * 100)
    check(run_cli("status", "--db", f"sqlite:///{garbage}"), 3, "cannot use database", "not a database")
    assert garbage.read_bytes() == b"this is not an SQLite file" * 100  # left as it was


def test_status_without_a_queue_says_how_to_make_one(tmp_path: Path) -> None:
    check(run_cli("status", "--state", str(tmp_path / "empty")), 2, "no queue database", "sweeper enqueue")
    assert not (tmp_path / "empty" / "queue.db").exists()


@pytest.mark.postgres
def test_a_postgres_database_that_does_not_exist_fails_at_once(pg_url: str) -> None:
    import sqlalchemy as sa

    url = sa.make_url(pg_url).set(database="sweeper_no_such_db").render_as_string(hide_password=False)
    check(run_cli("status", "--db", url), 3, "cannot use database", 'database "sweeper_no_such_db" does not exist')


def test_an_unreachable_database_gives_up_after_the_limit_with_a_clear_message(tmp_path: Path) -> None:
    down = "postgresql://postgres@127.0.0.1:1/sweeper"  # nothing listens on port 1
    check(
        run_cli("work", "--db", down, "--state", str(tmp_path / "s"), "--db-outage-limit", "1", "--no-tracking"),
        3,
        "did not answer for 1s",
        "check that the database server is running",
    )
    check(run_cli("status", "--db", down), 3, "did not answer", "127.0.0.1:1")  # interactive: a short limit


@pytest.mark.parametrize(
    "args, needle",
    [
        (("work", "--store", "tape"), "--store must be files, db or auto"),
        (("work", "--lease-ttl", "0"), "--lease-ttl"),
        (("work", "--workers", "0"), "--workers"),
        (("status", "--watch", "--json"), "--watch and --json do not go together"),
        (("export", "--csv", "-", "--status", "finished"), "not a job state"),
        (("retry",), "say which jobs to retry"),
        (("enqueue",), "Missing argument"),
        (("frobnicate",), "No such command"),
        (("status", "--colour"), "No such option"),
    ],
)
def test_bad_options_are_usage_errors_with_exit_code_2(state: Path, args: tuple[str, ...], needle: str) -> None:
    check(run_cli(*args, "--state", str(state)) if args[0] != "frobnicate" else run_cli(*args), 2, needle)
