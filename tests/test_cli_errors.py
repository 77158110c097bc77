"""Bad command-line input gets one clear error and the right exit code, never a traceback.

Exit codes: 2 for bad input (an option, a job id, a URL, a path), 3 for a database that cannot be
used or does not answer. Grid-file errors are covered by tests/test_spec.py and the fuzzer
(tests/test_fuzz_grid.py); a database that goes away under a worker by tests/test_db_outage.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_cli, run_grid

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
        # status creates nothing, not even the directory
        needle_here = "no queue database" if args[0] == "status" and url.startswith("sqlite") else needle
        check(run_cli(*args, "--db", url, "--state", str(tmp_path / "state")), code, needle_here)


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


def test_version_prints_the_version() -> None:
    from sweeper import __version__

    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"sweeper {__version__}", proc.stdout + proc.stderr


# Training jobs report test_accuracy and train_accuracy; one benchmark job reports a threshold,
# min_test_accuracy, which is also "like" accuracy but is not what a user means by it.
METRICS_GRID = """\
sweep: m
stages:
  train:
    kind: tests.kinds:metrics
    configs:
      - {metrics: {test_accuracy: 0.81, train_accuracy: 0.9, time_to_target_s: 12.0}}
      - {metrics: {test_accuracy: 0.85, train_accuracy: 0.95, time_to_target_s: 9.0}}
      - {metrics: {test_accuracy: 0.83, train_accuracy: 0.91, time_to_target_s: 11.0}}
  bench:
    kind: tests.kinds:metrics
    params: {metrics: {min_test_accuracy: 0.8, images_per_s: 3000.0}}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> str:
    return run_grid(tmp_path_factory.mktemp("metrics"), METRICS_GRID)


def test_an_unknown_by_metric_lists_the_metrics_that_exist_likeliest_first(finished: str) -> None:
    proc = run_cli("status", "--by", "accuracy", "--db", finished)
    check(proc, 2, "--by accuracy: no finished job reports a metric 'accuracy'", "did you mean --by test_accuracy?")
    listing = " ".join(proc.stderr.split()).split("(how many):")[1]
    assert listing.index("test_accuracy (3)") < listing.index("train_accuracy (3)") < listing.index("min_test_accuracy")
    check(run_cli("status", "--by", "no_such_metric", "--db", finished), 2, "no finished job reports", "test_accuracy")
    check(run_cli("status", "--by", "test_accuracy", "--db", finished), 0, "0.85")
    check(run_cli("status", "--db", finished), 0, "0.85")


def test_an_unknown_report_metric_is_an_error_not_a_report_without_its_tables(finished: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ("--out", str(out), "--no-plots", "--no-plugins", "--db", finished)
    check(
        run_cli("report", "--metric", "accuracy", *args), 2, "--metric accuracy", "did you mean --metric test_accuracy?"
    )
    check(run_cli("report", "--second", "time_to_target", *args), 2, "did you mean --second time_to_target_s?")
    assert not out.exists()
    check(run_cli("report", "--metric", "train_accuracy", *args), 0, "wrote")


def test_a_metric_is_not_judged_before_any_job_finished(state: Path) -> None:
    check(run_cli("status", "--by", "anything_at_all", "--state", str(state)), 0, "anything_at_all")


@pytest.mark.parametrize("command", ["cancel", "retry"])
def test_cancel_or_retry_of_an_unknown_stage_or_sweep_is_a_usage_error(state: Path, command: str) -> None:
    db = state / "queue.db"
    before = db.read_bytes()
    check(
        run_cli(command, "--stage", "aa", "--state", str(state)),
        2,
        "no stage named 'aa' in the queue",
        "did you mean 'a'?",
    )
    check(run_cli(command, "--stage", "a", "--sweep", "nosuch", "--state", str(state)), 2, "no sweep named 'nosuch'")
    assert db.read_bytes() == before  # nothing changed


def test_retrying_or_cancelling_a_done_job_says_why_nothing_happened(finished: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(finished)
    with engine.connect() as conn:
        job = conn.execute(sa.text("select id from jobs where stage = 'bench'")).scalar_one()
    engine.dispose()
    check(run_cli("retry", job, "--db", finished), 0, "retrying 0 job(s)", f"job {job} is done", "retry takes failed")
    check(run_cli("cancel", job, "--db", finished), 0, "cancelled 0 job(s)", f"job {job} is done")
    check(
        run_cli("retry", "--stage", "train", "--db", finished),
        0,
        "no failed or cancelled job in stage 'train' (3 done)",
    )
