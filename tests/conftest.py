"""Shared fixtures: real SQLite files, a real PostgreSQL database per test, the CLI as a subprocess.

PostgreSQL comes from SWEEPER_TEST_PG_URL (default: the local server with trust auth). When it is
unreachable the PostgreSQL tests skip, unless SWEEPER_REQUIRE_POSTGRES=1 (as in CI): then they fail.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
PG_BASE_URL = os.environ.get("SWEEPER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("SWEEPER_REQUIRE_POSTGRES") == "1"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _pg_admin_engine() -> sa.Engine:
    # pool_pre_ping: a test may restart the server (tests/test_db_outage.py) between the CREATE and
    # the DROP of its database, which kills the pooled connection.
    return sa.create_engine(
        PG_BASE_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True, connect_args={"connect_timeout": 3}
    )


def _pg_available() -> str | None:
    try:
        engine = _pg_admin_engine()
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure to reach the server
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def pg_server() -> str:
    problem = _pg_available()
    if problem:
        message = f"PostgreSQL unreachable at {PG_BASE_URL}: {problem}"
        if REQUIRE_PG:
            pytest.fail(message + " (SWEEPER_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(message)
    return PG_BASE_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"sweeper_test_{secrets.token_hex(4)}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            # the MLflow store that workers create next to a PostgreSQL queue (config.default_tracking_uri)
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}_mlflow" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'queue.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'queue.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(exist_ok=True)
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SWEEPER_DB", None)
    env.pop("SWEEPER_STATE", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run `sweeper ARGS...` as a real subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "sweeper.cli", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_grid(tmp: Path, grid: str) -> str:
    """Enqueue `grid` under `tmp` and run it to the end with one real worker; returns the queue URL."""
    (tmp / "g.yaml").write_text(grid)
    db = f"sqlite:///{tmp / 'state' / 'queue.db'}"
    assert run_cli("enqueue", "g.yaml", "--db", db, cwd=tmp).returncode == 0
    proc = run_cli("work", "--db", db, "--state", str(tmp / "state"), "--no-tracking", "--retry-backoff", "0", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return db


def start_worker(*args: str, cwd: Path | None = None, log: Path | None = None, **env: str) -> subprocess.Popen:
    """Start `sweeper work ARGS...` in the background; the caller kills it by pid.

    One worker process unless ARGS say otherwise: the pid the caller signals is the worker itself,
    not a supervisor of one worker per core.
    """
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115  (closed with the process)
    workers = () if "--workers" in args else ("--workers", "1")
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper.cli", "work", *workers, *args],
        cwd=cwd,
        env=cli_env(**env),
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Make sure a process this test started is gone (SIGCONT first, in case it was stopped)."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def fmnist_dir() -> Path:
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(
            f"real Fashion-MNIST not found in {FMNIST_DIR}: apt-get install dataset-fashion-mnist", pytrace=False
        )
    return FMNIST_DIR
