"""`sweeper export --csv`: every job as a row, params and metrics flattened into MLflow-style columns."""

from __future__ import annotations

import csv
import io

import sqlalchemy as sa

from sweeper.store.results import flatten
from tests.conftest import run_cli
from tests.statuszoo import DONE, build_zoo
from tests.unit.clirun import sweeper


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_export_has_every_job_with_its_params_and_metrics(db_url, tmp_path):
    zoo = build_zoo(db_url)
    zoo.close()
    out = tmp_path / "jobs.csv"
    proc = run_cli("export", "--csv", str(out), "--db", zoo.url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 9 job(s)" in proc.stdout
    rows = read_csv(out.read_text())
    assert len(rows) == 9
    by_id = {r["id"]: r for r in rows}
    engine = sa.create_engine(zoo.url)  # the jobs as the queue holds them, not as the export saw them
    with engine.connect() as conn:
        stage_of = dict(conn.execute(sa.text("select id, stage from jobs")).all())
    engine.dispose()
    assert set(zoo.ids.values()) <= set(stage_of) and len(stage_of) == 9
    assert {i: r["stage"] for i, r in by_id.items()} == stage_of
    assert sorted(r["status"] for r in rows) == sorted(
        ["done"] * 3 + ["failed", "running", "cancelled", "pending", "blocked", "blocked"]
    )
    for value, (acc, ttt, dur) in DONE.items():
        row = by_id[zoo.ids[f"done-{value}"]]
        assert float(row["params.value"]) == value and row["params.steps"] == "2"
        assert float(row["metrics.test_accuracy"]) == acc and float(row["metrics.time_to_target_s"]) == ttt
        assert abs(float(row["duration_s"]) - dur) < 1.0
        assert row["started_at"].endswith("+00:00") and row["error"] == ""
    failed = by_id[zoo.ids["failed"]]
    assert failed["error"] == "ValueError: kernel 7 is larger than the 5x5 feature map after conv1"
    assert failed["metrics.test_accuracy"] == ""
    blocked = by_id[zoo.ids["blocked"]]
    # An unresolved hand-off stays one cell, as written.
    assert blocked["params.upstream"] == '{"best_of":"search","metric":"test_accuracy","mode":"max"}'
    assert blocked["params.seed"] == "1"


def test_export_filters_and_writes_to_stdout(sqlite_url, tmp_path):
    zoo = build_zoo(sqlite_url)
    zoo.close()
    run = sweeper("export", "--csv", "-", "--status", "done", "--db", sqlite_url)  # in this process (clirun)
    assert run.code == 0, run.stderr
    rows = read_csv(run.stdout)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}
    run = sweeper("export", "--csv", "-", "--stage", "follow", "--db", sqlite_url)
    assert [r["stage"] for r in read_csv(run.stdout)] == ["follow", "follow"]
    run = sweeper("export", "--csv", "-", "--status", "finished", "--db", sqlite_url)
    assert run.code == 2 and "not a job state" in run.stderr and "Traceback" not in run.text


def test_export_resolved_handoff_becomes_the_upstream_job_id(tmp_path):
    (tmp_path / "g.yaml").write_text(
        "sweep: chain\nstages:\n"
        "  a: {kind: noop, grid: {value: [0.3, 0.7]}}\n"
        "  b: {kind: noop, needs: [a], params: {upstream: {best_of: a, metric: value}}}\n"
    )
    db = f"sqlite:///{tmp_path / 'state' / 'queue.db'}"
    assert run_cli("enqueue", "g.yaml", "--db", db, cwd=tmp_path).returncode == 0
    proc = run_cli("work", "--db", db, "--state", str(tmp_path / "state"), "--no-tracking", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(run_cli("export", "--csv", "-", "--db", db, cwd=tmp_path).stdout)
    best = next(r["id"] for r in rows if r["params.value"] == "0.7")
    follow = next(r for r in rows if r["stage"] == "b")
    assert follow["params.upstream"] == best and follow["status"] == "done"


def test_flatten_dots_nested_keys_and_keeps_tables_out():
    outcome = {"job": "abc123", "stage": "train", "params": {"lr": 0.1}, "metrics": {}, "artifacts": {}}
    flat = flatten(
        {
            "conv1": {"channels": 8, "kernel": 3},
            "model": outcome,
            "models": [outcome, {**outcome, "job": "def456"}],
            "sizes": [1, 2, 3],
            "triplets": [{"kept": 7, "acc": 0.9}],
            "init": None,
        }
    )
    assert flat == {
        "conv1.channels": 8,
        "conv1.kernel": 3,
        "model": "abc123",
        "models": "abc123,def456",
        "sizes": "[1,2,3]",
        "init": None,
    }
    assert flatten({"triplets": [{"kept": 7}]}, records=True) == {"triplets": '[{"kept":7}]'}
