"""Security checks on real processes: crafted pickles, checkpoints that do not match their
recorded sha256, database passwords in any output, file modes, YAML tags.

Complements tests/test_checkpoints.py (a crafted checkpoint blob refused by the store): here the
crafted file comes in through the paths a real sweep uses.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.chaos.harness import mlflow_template
from tests.chaos.kinds import crafted_pickle

from .conftest import run_cli, start_worker, stop_process, wait_for

WORK = ("--workers", "1", "--threads-per-worker", "1", "--retry-backoff", "0")  # one worker: short leases below


def _jobs(db: Path) -> dict[str, dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return {r["stage"]: dict(r) for r in conn.execute("select * from jobs")}
    finally:
        conn.close()


def test_a_crafted_model_artifact_is_refused_by_prune_and_its_command_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    up = {
        "marker": str(marker),
        "dataset": "synthetic",
        "train_subset": 200,
        "test_subset": 100,
        "seed": 0,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "batch_size": 32,
    }
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        textwrap.dedent(f"""\
        sweep: evil
        stages:
          up: {{kind: "tests.chaos.kinds:evil_model", params: {json.dumps(up)}}}
          prune:
            kind: prune
            needs: [up]
            params: {{model: {{result_of: up}}, layer: conv1, finetune_epochs: 0}}
        """)
    )
    state = tmp_path / "state"
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    proc = run_cli("work", "--state", str(state), "--no-tracking", *WORK)
    assert proc.returncode == 0, proc.stderr

    assert not marker.exists()  # the command inside the pickle never ran
    jobs = _jobs(state / "queue.db")
    assert jobs["up"]["status"] == "done"
    prune = jobs["prune"]
    assert prune["status"] == "failed" and prune["failures"] == 1  # refused at once, not retried
    assert "model.pt" in prune["error"] and "refused" in prune["error"], prune["error"]
    assert "Traceback" not in prune["error"]


def test_a_checkpoint_that_does_not_match_its_recorded_sha256_is_never_loaded(tmp_path: Path) -> None:
    """The newest checkpoint file is swapped for a crafted pickle (same name): the next worker
    skips it without unpickling and resumes from the previous, verified one."""
    marker = tmp_path / "pwned"
    grid = tmp_path / "grid.yaml"
    grid.write_text("sweep: swap\nstages:\n  a: {kind: noop, params: {steps: 40, step_s: 0.1, checkpoint: true}}\n")
    state = tmp_path / "state"
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    worker = start_worker("--state", str(state), "--no-tracking", "--lease-ttl", "2", *WORK, log=tmp_path / "first.log")
    try:
        wait_for(lambda: len(_checkpoints(state)) >= 2, timeout=120, what="two recorded checkpoints")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        stop_process(worker)
    newest = state / _checkpoints(state)[0]  # the newest one the queue recorded, with its sha256
    newest.write_bytes(crafted_pickle(str(marker)))  # same name, other bytes

    proc = run_cli("work", "--state", str(state), "--no-tracking", "--lease-ttl", "1", "--wait", "--poll", "0.2", *WORK)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert "fails its sha256" in proc.stderr
    job = _jobs(state / "queue.db")["a"]
    assert job["status"] == "done" and job["failures"] == 0
    assert json.loads(job["result"])["resumed_from"] >= 1  # from the previous checkpoint, not from zero


def _checkpoints(state: Path) -> list[str]:
    """Locations of the recorded checkpoints, newest first."""
    conn = sqlite3.connect(state / "queue.db")
    try:
        return [r[0] for r in conn.execute("select location from checkpoints order by seq desc")]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def chaos_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the empty MLflow store template is made once for this module."""
    return tmp_path_factory.mktemp("mlflow-template")


@pytest.fixture
def secret_url(pg_url: str) -> tuple[str, str]:
    """The test database's URL with a password in it (trust authentication accepts and ignores it)."""
    password = f"pw-{secrets.token_hex(8)}"
    url = sa.make_url(pg_url).set(password=password).render_as_string(hide_password=False)
    assert password in url
    return url, password


@pytest.mark.postgres
def test_database_passwords_never_appear_in_output_logs_status_json_mlflow_or_the_queue(
    secret_url: tuple[str, str], tmp_path: Path, chaos_cache: Path
) -> None:
    url, password = secret_url
    state = tmp_path / "state"
    state.mkdir()
    (state / "mlflow.db").write_bytes(mlflow_template(chaos_cache).read_bytes())
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "sweep: pw\nstages:\n  a: {kind: noop, grid: {value: [1, 2]}, params: {steps: 2}}\n"
        "  bad: {kind: noop, params: {fail: true}, max_failures: 1}\n"
    )
    outputs: list[str] = []

    def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
        proc = run_cli(*args, **env)
        outputs.append(f"{proc.stdout}\n{proc.stderr}")  # what the tool printed (not its command line)
        return proc

    assert cli("enqueue", str(grid), "--state", str(state), "--db", url).returncode == 0
    assert cli("enqueue", str(grid), "--dry-run", "--state", str(state), "--db", url).returncode == 0
    assert cli("work", "--state", str(state), "--db", url, *WORK).returncode == 0
    status = cli("status", "--json", "--state", str(state), "--db", url)
    assert status.returncode == 0 and json.loads(status.stdout)["database"]
    assert cli("status", "--state", str(state), "--db", url).returncode == 0
    job_id = re.search(r"^new\s+([0-9a-f]{12})\s", outputs[0], re.M).group(1)  # a job row of the enqueue table
    assert cli("show", job_id, "--json", "--state", str(state), "--db", url).returncode == 0
    assert cli("export", "--csv", "-", "--state", str(state), "--db", url).returncode == 0
    assert cli("status", "--state", str(state), SWEEPER_DB=url).returncode == 0  # from the environment
    # errors that quote the URL: a database that does not exist, a server that does not answer
    wrong_db = sa.make_url(url).set(database="no_such_db_xyz").render_as_string(hide_password=False)
    assert cli("status", "--state", str(state), "--db", wrong_db).returncode == 3
    down = sa.make_url(url).set(port=1).render_as_string(hide_password=False)
    assert cli("work", "--state", str(state), "--db", down, "--db-outage-limit", "1").returncode == 3

    everything = "\n".join(outputs)
    assert "***" in everything  # the URL was shown, masked
    assert password not in everything
    for path in state.rglob("*"):  # mlflow.db (tags, params), checkpoints, logs, lease files
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            for table in ("sweeps", "stages", "jobs", "events", "workers", "checkpoints", "artifacts"):
                rows = conn.execute(sa.text(f"select * from {table}")).all()
                assert password not in repr(rows), table
    finally:
        engine.dispose()
    # the runs went to the MLflow database next to the queue (<db>_mlflow), not to state/mlflow.db
    assert not (state / "mlruns").exists()
    mlflow_url = sa.make_url(url).set(database=f"{sa.make_url(url).database}_mlflow")
    engine = sa.create_engine(mlflow_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            tags = conn.execute(sa.text("select key, value from tags")).all()
            params = conn.execute(sa.text("select key, value from params")).all()
            exp_tags = conn.execute(sa.text("select key, value from experiment_tags")).all()
    finally:
        engine.dispose()
    assert tags and password not in repr(tags) + repr(params) + repr(exp_tags)


def test_files_the_tool_creates_under_the_state_directory_are_not_world_writable(
    tmp_path: Path, chaos_cache: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "mlflow.db").write_bytes(mlflow_template(chaos_cache).read_bytes())
    os.chmod(state / "mlflow.db", 0o644)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "sweep: modes\nstages:\n  t:\n    kind: train\n"
        "    params: {dataset: synthetic, train_subset: 300, test_subset: 100, max_epochs: 1, dense: 8,\n"
        "             conv1: {channels: 2, kernel: 3}, conv2: {channels: 2, kernel: 3}, checkpoint_every_s: 0.05}\n"
    )
    # The most permissive umask a user could have: the tool must not rely on it.
    for args in (("enqueue", str(grid)), ("work", *WORK), ("export", "--csv", str(state / "export.csv"))):
        proc = subprocess.run(
            ["sh", "-c", 'umask 000 && exec "$@"', "sh", *_cli_cmd(), *args, "--state", str(state)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
    made = [p for p in state.rglob("*") if p.name != "mlflow.db"]
    assert any(p.suffix == ".ckpt" for p in made) and any(p.name == "model.pt" for p in made)
    loose = [f"{p} {stat.filemode(p.stat().st_mode)}" for p in [state, *made] if p.stat().st_mode & stat.S_IWOTH]
    assert not loose


def _cli_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "sweeper.cli"]


def _env() -> dict[str, str]:
    from .conftest import cli_env

    return cli_env()


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system [touch MARKER]",
        "!!python/object/new:subprocess.Popen [[touch, MARKER]]",
        "!!python/name:os.system",
        "!!python/module:os",
        "!!python/object:argparse.Namespace {x: 1}",
        '!!python/object/apply:subprocess.check_output [["touch", "MARKER"]]',
    ],
)
def test_yaml_tags_that_would_construct_python_objects_are_refused(tag: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = tmp_path / "state"
    good = tmp_path / "good.yaml"
    good.write_text("sweep: s\nstages:\n  a: {kind: noop}\n")
    assert run_cli("enqueue", str(good), "--state", str(state)).returncode == 0
    before = (state / "queue.db").read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"sweep: s\nstages:\n  a:\n    kind: noop\n    params:\n      value: {tag.replace('MARKER', str(marker))}\n"
    )
    proc = run_cli("enqueue", str(bad), "--state", str(state))
    assert proc.returncode == 2, proc.stderr
    assert "tag not allowed" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
    assert (state / "queue.db").read_bytes() == before


# A password with '@' in it, and one given as ?password= (both were shown in clear before).
LEAKS = {
    "at": ("postgresql://alice:pa@ss@w0rd-xq@db.example:5432/lab", "pa@ss@w0rd-xq"),
    "query": ("postgresql://alice@db.example/lab?sslmode=require&password=qs-secret-77", "qs-secret-77"),
}


@pytest.mark.parametrize("case", sorted(LEAKS))
def test_a_password_in_a_job_error_is_masked_in_the_queue_show_status_csv_and_report(tmp_path: Path, case: str) -> None:
    url, password = LEAKS[case]
    state = tmp_path / "state"
    grid = tmp_path / "grid.yaml"
    grid.write_text("sweep: leak\nstages:\n  a: {kind: 'tests.kinds:leak', max_failures: 1}\n")
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    worker = run_cli("work", "--state", str(state), "--no-tracking", *WORK, LEAK_URL=url)
    assert worker.returncode == 0, worker.stderr
    job = _jobs(state / "queue.db")["a"]
    assert job["status"] == "failed" and "could not connect" in job["error"] and "***" in job["error"]

    def shown() -> str:
        args = ("--state", str(state))
        procs = [
            run_cli("show", job["id"], *args),
            run_cli("show", job["id"], "--json", *args),
            run_cli("status", *args),
            run_cli("status", "--json", *args),
            run_cli("export", "--csv", "-", *args),
            run_cli("report", "--out", str(tmp_path / "report"), "--no-plots", "--no-plugins", *args),
        ]
        assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs]
        return "\n".join(p.stdout + p.stderr for p in procs) + (tmp_path / "report" / "report.md").read_text()

    # stored masked: nothing in the queue, the worker's output or any display holds the password
    everything = worker.stdout + worker.stderr + shown()
    assert "could not connect" in everything and password not in everything
    conn = sqlite3.connect(state / "queue.db")
    try:
        assert password not in repr(conn.execute("select * from jobs").fetchall())
        assert password not in repr(conn.execute("select * from events").fetchall())
        # a row written by an older version, unmasked: every display masks it too
        conn.execute("update jobs set error = ?", (f"Traceback (most recent call last):\nRuntimeError: {url}",))
        conn.commit()
    finally:
        conn.close()
    everything = shown()
    assert "RuntimeError: postgresql://alice" in everything and password not in everything


@pytest.mark.parametrize(
    "text, masked",
    [
        ("postgresql+psycopg://u:secret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql://u:p@ss@w@rd@host/db?x=1", "postgresql://u:***@host/db?x=1"),  # '@' in the password
        ("connect('postgresql://u:s3cr@t@h/db') failed", "connect('postgresql://u:***@h/db') failed"),
        ("postgresql://u@h/db?password=secret&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://u@h/db?sslmode=require&PASSWORD=se%40c", "postgresql://u@h/db?sslmode=require&PASSWORD=***"),
        ("host=db password=secret user=x", "host=db password=*** user=x"),  # libpq key=value
        ("password='a b c' host=x", "password=*** host=x"),
        ("sqlite:////tmp/state/queue.db", "sqlite:////tmp/state/queue.db"),
        ("https://h:8080/x and the passwords table", "https://h:8080/x and the passwords table"),
    ],
)
def test_mask_password_hides_every_form_of_password(text: str, masked: str) -> None:
    from sweeper.config import mask_password

    assert mask_password(text) == masked


def test_a_queue_row_naming_a_path_outside_the_state_directory_cannot_make_a_worker_write_there(
    tmp_path: Path,
) -> None:
    """Anyone who can write the shared queue can rename a sweep; the worker must not follow it out."""
    state = tmp_path / "state"
    grid = tmp_path / "grid.yaml"
    grid.write_text("sweep: s\nstages:\n  a: {kind: noop, params: {steps: 3}}\n")
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    escape = "../../escaped"
    conn = sqlite3.connect(state / "queue.db")
    try:
        for table, column in (("sweeps", "name"), ("stages", "sweep"), ("jobs", "sweep")):
            conn.execute(f"update {table} set {column} = ?", (escape,))
        conn.commit()
    finally:
        conn.close()
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(state)}
    proc = run_cli("work", "--state", str(state), "--no-tracking", *WORK)
    assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    job = _jobs(state / "queue.db")["a"]
    assert job["status"] == "failed" and job["failures"] == 1  # not retried: it cannot get better
    assert "sweep name '../../escaped' holds a path separator" in job["error"]
    assert {p for p in tmp_path.rglob("*") if not p.is_relative_to(state)} == before
