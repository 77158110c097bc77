"""Stale dependents: retrying (or enqueueing more of) an upstream stage re-opens its hand-offs.

Issue 18's reproduction: cancel one of two upstream jobs, the stage settles with one done, the
dependent resolves its best_of from that single job; retry the cancelled job and the dependent
used to stay pending with a choice made from 1 of 2 jobs. Now it goes back to blocked and
chooses again from both; a dependent that already ran is marked stale, and `retry --stale`
runs it again.
"""

from __future__ import annotations

import textwrap

import pytest
import sqlalchemy as sa

from sweeper.grid.spec import parse_spec
from sweeper.store.db import jobs, open_database
from sweeper.store.queue import Queue
from sweeper.store.stale import stale_counts, stale_jobs

GRID = textwrap.dedent("""\
    sweep: st
    stages:
      search: {kind: noop, grid: {value: [1, 2]}}
      pick: {kind: noop, needs: [search], params: {upstream: {best_of: search, metric: value, mode: max}}}
      after: {kind: noop, needs: [pick], params: {upstream: {result_of: pick}}}
    """)


@pytest.fixture
def queue(db_url):
    db = open_database(db_url)
    q = Queue(db, retry_backoff_s=0.0)
    yield q
    db.dispose()


def job(queue: Queue, stage: str) -> sa.Row:
    with queue.db.read() as conn:
        c = jobs.c
        return conn.execute(
            sa.select(c.id, c.status, c.resolved_params, c.provenance, c.attempt, c.result).where(c.stage == stage)
        ).one()


def stale(queue: Queue) -> dict[str, str]:
    with queue.db.read() as conn:
        return stale_jobs(conn)


def finish(queue: Queue, stage: str) -> list[str]:
    """Claim and complete every pending job of `stage`; its result's `value` is its param's."""
    done = []
    while (claimed := queue.claim("w", 30, stages_filter=[stage])) is not None:
        queue.complete(claimed.lease, {"value": claimed.params.get("value", 0)})
        done.append(claimed.id)
    return done


def settled_with_one_of_two(queue: Queue) -> tuple[str, str]:
    """search: value 2 cancelled, value 1 done; pick resolves from value 1 alone. Returns (cancelled, done)."""
    spec = parse_spec(GRID, "grid.yaml")
    queue.enqueue(spec)
    one, two = (j.id for j in spec.jobs if j.stage == "search")
    queue.cancel([two])
    assert finish(queue, "search") == [one]
    pick = job(queue, "pick")
    assert pick.status == "pending" and pick.provenance == {"upstream": one}
    return two, one


def test_retry_of_a_cancelled_upstream_job_puts_its_resolved_dependent_back_to_blocked(queue):
    two, _ = settled_with_one_of_two(queue)
    assert queue.retry([two]) == [two]
    pick = job(queue, "pick")
    assert pick.status == "blocked" and pick.resolved_params is None and pick.provenance is None
    assert not stale(queue)  # it never ran: nothing stale, it simply chooses again
    finish(queue, "search")
    pick = job(queue, "pick")
    assert pick.status == "pending" and pick.provenance == {"upstream": two}  # the best of both: value 2
    assert pick.resolved_params["upstream"]["metrics"] == {"value": 2}


def test_a_dependent_that_already_ran_is_marked_stale_and_retry_stale_runs_it_again(queue):
    two, _ = settled_with_one_of_two(queue)
    finish(queue, "pick")
    finish(queue, "after")
    ran_pick, ran_after = job(queue, "pick"), job(queue, "after")
    assert ran_pick.status == ran_after.status == "done"

    queue.retry([two])
    assert job(queue, "pick").status == "done"  # kept: its result stays readable
    marks = stale(queue)
    assert set(marks) == {ran_pick.id}  # `after` took pick's result, which has not changed (yet)
    assert marks[ran_pick.id] == f"upstream job(s) {two} retried"
    with queue.db.read() as conn:
        assert stale_counts(conn) == {("st", "pick"): 1}

    finish(queue, "search")
    assert queue.retry_stale([ran_pick.id]) == [ran_pick.id]
    pick = job(queue, "pick")
    assert pick.status == "pending" and pick.result is None and pick.provenance == {"upstream": two}
    assert not stale(queue).get(ran_pick.id)
    # pick is open again, so `after`, which ran on pick's old result, is stale now
    assert set(stale(queue)) == {ran_after.id}
    finish(queue, "pick")
    assert queue.retry_stale([ran_after.id]) == [ran_after.id]
    finish(queue, "after")
    after = job(queue, "after")
    assert after.status == "done" and after.resolved_params["upstream"]["job"] == ran_pick.id
    assert after.attempt == 2 and not stale(queue)


def test_enqueue_that_adds_upstream_jobs_reopens_the_hand_off(queue):
    spec = parse_spec(GRID, "grid.yaml")
    queue.enqueue(spec)
    finish(queue, "search")
    assert job(queue, "pick").status == "pending"
    queue.enqueue(parse_spec(GRID.replace("value: [1, 2]", "value: [1, 2, 3]"), "grid.yaml"))
    pick = job(queue, "pick")
    assert pick.status == "blocked" and pick.resolved_params is None
    finish(queue, "search")
    assert job(queue, "pick").resolved_params["upstream"]["metrics"] == {"value": 3}


def test_a_dependent_failed_by_its_settle_is_blocked_again_when_the_upstream_reopens(queue):
    spec = parse_spec(GRID, "grid.yaml")
    queue.enqueue(spec)
    queue.cancel([j.id for j in spec.jobs if j.stage == "search"])
    pick = job(queue, "pick")
    assert pick.status == "failed" and pick.attempt == 0  # no upstream job succeeded
    queue.retry([spec.jobs[0].id])
    assert job(queue, "pick").status == "blocked"
    finish(queue, "search")
    assert job(queue, "pick").status == "pending"


def test_retry_stale_leaves_jobs_that_are_not_stale_alone(queue):
    spec = parse_spec(GRID, "grid.yaml")
    queue.enqueue(spec)
    finish(queue, "search")
    finish(queue, "pick")
    pick = job(queue, "pick")
    assert queue.retry_stale([pick.id]) == [] and job(queue, "pick").status == "done"


def test_status_show_report_name_the_stale_job_and_retry_stale_runs_it_again(tmp_path):
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from sweeper.cli import app

    state = tmp_path / "state"
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    runner = CliRunner()
    assert runner.invoke(app, ["enqueue", str(grid), "--state", str(state)]).exit_code == 0
    db = open_database(f"sqlite:///{state / 'queue.db'}")
    try:
        q = Queue(db, retry_backoff_s=0.0)
        spec = parse_spec(GRID, "grid.yaml")
        two = spec.jobs[1].id
        q.cancel([two])
        finish(q, "search")
        finish(q, "pick")
        pick = job(q, "pick").id
        # a checkpoint file of the old run, which a rerun must not resume from
        old_ckpt = state / "checkpoints" / "st" / pick / "1.ckpt"
        old_ckpt.parent.mkdir(parents=True)
        old_ckpt.write_bytes(b"old")
        assert runner.invoke(app, ["retry", two, "--state", str(state)]).exit_code == 0

        def cli(*args: str) -> str:
            result = runner.invoke(app, [*args, "--state", str(state)])
            assert result.exit_code == 0, (args, result.output, result.exception)
            return " ".join(result.output.split())

        assert "1 stale (upstream changed): sweeper retry --stale" in cli("status")
        stages = {s["stage"]: s for s in json.loads(cli("status", "--json"))["stages"]}
        assert stages["pick"]["stale"] == 1 and stages["search"]["stale"] == 0
        assert f"stale: upstream job(s) {two} retried since it ran" in cli("show", pick)
        assert json.loads(cli("show", pick, "--json"))["stale"] == f"upstream job(s) {two} retried"
        cli("report", "--out", str(tmp_path / "report"), "--no-plots")
        report = Path(tmp_path / "report" / "report.md").read_text()
        assert "**Stale:** 1 job(s)" in report and f"`{pick}`" in report

        # the MLflow run the job logged to: a rerun must open a run of its own, not continue this one
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
        exp = client.create_experiment("st", artifact_location=(tmp_path / "mlartifacts").as_uri())
        old_run = client.create_run(exp, tags={"job_id": pick, "stage": "pick"}).info.run_id

        finish(q, "search")
        assert f"running 1 stale job(s) again: {pick}" in cli("retry", "--stale")
        tags = client.get_run(old_run).data.tags
        assert tags["job_id"] == f"{pick}/stale" and tags["sweeper.superseded"] == "true"
        with db.read() as conn:
            assert conn.execute(sa.select(jobs.c.tracking_run_id).where(jobs.c.id == pick)).scalar() is None
        assert not old_ckpt.exists()
        assert job(q, "pick").status == "pending"
        assert json.loads(cli("show", pick, "--json"))["stale"] is None
        assert "stale (upstream changed)" not in cli("status")
        refused = runner.invoke(app, ["retry", "--stale", pick, "--state", str(state)])
        assert getattr(refused.exception, "exit_code", None) == 2 and "not stale" in refused.exception.message
    finally:
        db.dispose()


def test_a_plain_retry_of_a_stale_failed_job_keeps_it_stale(queue):
    # a plain retry runs the job on the same, old hand-off: only `retry --stale` chooses again
    two, _ = settled_with_one_of_two(queue)
    claimed = queue.claim("w", 30, stages_filter=["pick"])
    queue.fail(claimed.lease, "boom", retry=False)
    queue.retry([two])
    assert set(stale(queue)) == {claimed.id}
    assert queue.retry([claimed.id]) == [claimed.id]
    assert job(queue, "pick").status == "pending" and set(stale(queue)) == {claimed.id}
    finish(queue, "search")
    finish(queue, "pick")
    assert job(queue, "pick").status == "done" and set(stale(queue)) == {claimed.id}
    assert queue.retry_stale([claimed.id]) == [claimed.id] and not stale(queue)
