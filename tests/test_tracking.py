"""MLflowTracker against a real MLflow SQLite store: one run per job, buffered metrics, resumed runs
without duplicate steps, params, tags, artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from sweeper.config import postgres_tracking_uri, resolve_settings
from sweeper.running.tracking import ARTIFACTS_ENV, VIEW_KEY, MLflowTracker, NullTracker, RunInfo, make_tracker

from .conftest import cli_env, stop_process, wait_for


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """One MLflow store for the module: creating its tables takes seconds."""
    state = tmp_path_factory.mktemp("mlflow") / "state"
    state.mkdir()
    return f"sqlite:///{state / 'mlflow.db'}", state


def tracker(store) -> MLflowTracker:
    uri, state = store
    t = make_tracker(uri, state)
    assert isinstance(t, MLflowTracker)
    return t


def info(job_id: str, attempt: int = 1, sweep: str = "sweep-a", params: dict | None = None) -> RunInfo:
    params = params if params is not None else {"lr": 0.01, "conv1": {"channels": 8, "kernel": 3}}
    return RunInfo(sweep, "model_search", job_id, "train", "lr=0.01 conv1.channels=8", attempt, params)


def history(store, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(store[0])
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_job_gets_one_run_named_after_its_grid_values_and_stage_with_tags_and_flat_params(store):
    t = tracker(store)
    run_id = t.start(info("job-tags"), None)
    t.end("FINISHED")
    run = MlflowClient(store[0]).get_run(run_id)
    assert run.info.run_name == "lr=0.01 c1.ch=8 · model_search"  # what differs leads (issue 18)
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("sweep", "stage", "job_id", "kind", "attempt")} == {
        "sweep": "sweep-a",
        "stage": "model_search",
        "job_id": "job-tags",
        "kind": "train",
        "attempt": "1",
    }
    assert run.data.params == {"lr": "0.01", "conv1.channels": "8", "conv1.kernel": "3"}


def test_each_sweep_is_its_own_experiment(store):
    a, b = tracker(store), tracker(store)
    run_a = a.start(info("job-exp-a", sweep="exp-one"), None)
    run_b = b.start(info("job-exp-b", sweep="exp-two"), None)
    client = MlflowClient(store[0])
    exp_a = client.get_experiment(client.get_run(run_a).info.experiment_id)
    exp_b = client.get_experiment(client.get_run(run_b).info.experiment_id)
    assert (exp_a.name, exp_b.name) == ("exp-one", "exp-two")
    again = tracker(store).start(info("job-exp-c", sweep="exp-one"), None)
    assert client.get_run(again).info.experiment_id == exp_a.experiment_id


def test_metrics_are_buffered_until_flush(store):
    t = tracker(store)
    run_id = t.start(info("job-buffer"), None)
    for step in range(1, 51):
        t.log_metrics({"loss": 1.0 / step}, step)
    assert history(store, run_id, "loss") == []  # nothing written on the per-batch path
    t.flush()
    assert [s for s, _ in history(store, run_id, "loss")] == list(range(1, 51))
    t.end("FINISHED")


def test_a_resumed_attempt_continues_the_same_run_without_duplicate_steps(store):
    first = tracker(store)
    run_id = first.start(info("job-resume"), None)
    for step in range(1, 8):  # steps 1..7 reach the store; the checkpoint was at step 4
        first.log_metrics({"loss": 10.0 - step, "train_acc": step / 10}, step)
    first.flush()
    first.log_metrics({"loss": 99.0}, 8)  # buffered, then the worker is killed (no end()): never written
    del first

    second = tracker(store)
    assert second.start(info("job-resume", attempt=2), run_id) == run_id
    for step in range(5, 11):  # the replay from the checkpoint at step 4, then new steps
        second.log_metrics({"loss": 10.0 - step, "train_acc": step / 10}, step)
    second.end("FINISHED")

    assert history(store, run_id, "loss") == [(s, 10.0 - s) for s in range(1, 11)]
    assert history(store, run_id, "train_acc") == [(s, s / 10) for s in range(1, 11)]
    run = MlflowClient(store[0]).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["attempt"] == "2"


def test_a_run_that_lost_its_params_gets_them_when_reopened(store):
    t = tracker(store)
    run_id = t.start(info("job-params", params={}), None)  # as if the first attempt died right after create_run
    t.end("KILLED")
    tracker(store).start(info("job-params", attempt=2), run_id)
    assert MlflowClient(store[0]).get_run(run_id).data.params["lr"] == "0.01"


def test_an_unknown_run_id_starts_a_new_run(store):
    t = tracker(store)
    run_id = t.start(info("job-unknown"), "0" * 32)
    assert run_id != "0" * 32
    assert MlflowClient(store[0]).get_run(run_id).data.tags["job_id"] == "job-unknown"


def test_artifacts_are_attached_to_the_run_under_the_state_directory(store, tmp_path):
    t = tracker(store)
    run_id = t.start(info("job-artifact"), None)
    path = tmp_path / "history.json"
    path.write_text('{"points": []}')
    t.log_artifact(path)
    t.end("FINISHED")
    client = MlflowClient(store[0])
    assert [f.path for f in client.list_artifacts(run_id)] == ["history.json"]
    assert Path(client.download_artifacts(run_id, "history.json")).read_text() == '{"points": []}'
    assert client.get_run(run_id).info.artifact_uri.startswith((store[1] / "mlartifacts").resolve().as_uri())


def test_a_failed_write_keeps_its_points_for_the_next_flush(store):
    t = tracker(store)
    run_id = t.start(info("job-retry"), None)
    t.log_metrics({"loss": 1.0}, 1)
    real, t._run_id = t._run_id, "no-such-run"  # the store refuses the write
    with pytest.raises(Exception):  # noqa: B017  (MLflow's own exception type)
        t.flush()
    t._run_id = real
    t.flush()
    assert history(store, run_id, "loss") == [(1, 1.0)]


def test_tracking_switched_off_is_a_null_tracker(tmp_path):
    t = make_tracker(None, tmp_path)
    assert isinstance(t, NullTracker)
    assert t.start(info("job-null"), None) is None


def test_experiments_open_on_the_runs_table_with_a_view_that_shows_the_stage(store):
    run_id = tracker(store).start(info("job-ui", sweep="exp-ui"), None)
    client = MlflowClient(store[0])
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI overview
    view = json.loads(exp.tags[f"mlflow.sharedViewState.{VIEW_KEY}"])
    assert view["selectedColumns"][0] == "tags.`stage`"


def test_an_experiment_made_by_an_older_version_gets_the_ui_tags(store):
    client = MlflowClient(store[0])
    client.create_experiment("exp-old")
    run_id = tracker(store).start(info("job-old", sweep="exp-old"), None)
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert exp.name == "exp-old" and exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_default_store_is_next_to_the_queue(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sqlite = resolve_settings(state=tmp_path / "s")
    assert sqlite.tracking_uri == f"sqlite:///{(tmp_path / 's').resolve() / 'mlflow.db'}"
    pg = resolve_settings(state=tmp_path / "s", db="postgres://me:secret@db.example:6543/sweeps")
    assert pg.tracking_uri == "postgresql+psycopg://me:secret@db.example:6543/sweeps_mlflow"
    given = resolve_settings(state=tmp_path / "s", db="postgres://h/q", tracking_uri="http://mlflow:5000")
    assert given.tracking_uri == "http://mlflow:5000"
    long = resolve_settings(db="postgresql://h/" + "q" * 70).tracking_uri
    assert long.endswith("_mlflow") and len(long.rsplit("/", 1)[1]) == 63  # PostgreSQL's name limit
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_settings(db="postgres://h/q").tracking_uri == "http://env:5000"


@pytest.mark.postgres
def test_postgres_store_is_created_next_to_the_queue_and_keeps_files_in_the_queue(pg_url, tmp_path, monkeypatch):
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    uri = postgres_tracking_uri(pg_url)
    t = make_tracker(uri, tmp_path, pg_url)
    assert isinstance(t, MLflowTracker)
    run_id = t.start(info("job-pg", sweep="exp-pg"), None)  # creates database <queue>_mlflow and its tables
    path = tmp_path / "curves.png"
    path.write_bytes(b"png")
    t.log_artifact(path)  # no place every machine reaches: the file stays in the sweep's own store
    t.end("FINISHED")
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "sweeper show" in run.data.tags["sweeper.files"]
    assert client.list_artifacts(run_id) == []
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()
    # the queue's own database holds no MLflow table (MLflow has a `jobs` table of its own)
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert "experiments" not in sa.inspect(conn).get_table_names()
    engine.dispose()

    shared = tmp_path / "shared-artifacts"
    monkeypatch.setenv(ARTIFACTS_ENV, shared.as_uri())  # e.g. a path every machine mounts
    t = make_tracker(uri, tmp_path, pg_url)
    run_id = t.start(info("job-pg-shared", sweep="exp-pg-shared"), None)
    t.log_artifact(path)
    t.end("FINISHED")
    assert [f.path for f in client.list_artifacts(run_id)] == ["curves.png"]
    assert list(shared.rglob("curves.png"))


RACE = """
import pathlib, sys, time
import mlflow.tracking  # imported before the barrier: the race is over the store, not the import
from sweeper.config import postgres_tracking_uri
from sweeper.running.tracking import RunInfo, make_tracker

queue, gate, name = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
pathlib.Path(f"{gate}.{name}").touch()
while not gate.exists():
    time.sleep(0.005)
t = make_tracker(postgres_tracking_uri(queue), pathlib.Path(sys.argv[4]), queue)
t.start(RunInfo("race", "s", name, "noop", name, 1, {}), None)
t.end("FINISHED")
"""


@pytest.mark.postgres
def test_workers_starting_at_once_on_a_fresh_server_share_one_store(pg_url, tmp_path):
    """Three workers (processes, as on three machines) open the default store of a fresh queue at the
    same moment, released by one barrier: the database and MLflow's tables are created once, and
    every job gets its run in the one experiment."""
    gate, names = tmp_path / "gate", [f"job-{i}" for i in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, pg_url, str(gate), name, str(tmp_path / name)],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    try:
        wait_for(lambda: all(Path(f"{gate}.{n}").exists() for n in names), timeout=300, what="three ready workers")
        gate.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            stop_process(proc)
    client = MlflowClient(postgres_tracking_uri(pg_url))
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.data.tags["job_id"] for r in runs) == names
    assert all(r.info.status == "FINISHED" for r in runs)
