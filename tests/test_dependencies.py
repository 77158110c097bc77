"""Dependent stages: blocked until everything upstream finished, then hand-offs resolve once."""

from __future__ import annotations

import textwrap

import pytest
import sqlalchemy as sa

from sweeper.grid.spec import parse_spec
from sweeper.store.db import open_database
from sweeper.store.queue import Queue
from sweeper.store.readmodel import work_summary
from sweeper.views.dashboard import collect

PIPELINE = """
sweep: dep
stages:
  search:
    kind: noop
    grid: {value: [0.5, 0.9, 0.7]}
    params: {checkpoint: false}
  tune:
    kind: tests.kinds:echo
    needs: [search]
    inherit: {from: search, metric: value, mode: max, keys: [value]}
    grid: {seed: [1, 2]}
  use:
    kind: tests.kinds:echo
    needs: [tune, search]
    params:
      best: {best_of: search, metric: value, mode: min}
      all: {all_of: [search]}
"""


@pytest.fixture
def queue(db_url):
    db = open_database(db_url)
    q = Queue(db, retry_backoff_s=0.0)
    yield q
    db.dispose()


def run_stage(queue: Queue, stage: str, outcome) -> list[str]:
    """Claim every pending job of `stage`, finishing each with outcome(job) -> ('done', result) | ('fail', msg)."""
    ids = []
    while (job := queue.claim("w", 30, stages_filter=[stage])) is not None:
        kind, payload = outcome(job)
        if kind == "done":
            queue.complete(job.lease, payload)
        else:
            queue.fail(job.lease, payload, retry=False)
        ids.append(job.id)
    return ids


def by_stage(queue: Queue) -> dict[str, list[dict]]:
    with queue.db.read() as conn:
        rows = (
            conn.execute(
                sa.text("select stage, status, resolved_params, provenance, error, params from jobs order by position")
            )
            .mappings()
            .all()
        )
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["stage"], []).append(dict(r))
    return out


def as_dict(value):
    import json

    return json.loads(value) if isinstance(value, str) else value


def test_stage_stays_blocked_until_every_upstream_job_finished_then_inherits_from_the_best(queue):
    queue.enqueue(parse_spec(textwrap.dedent(PIPELINE), "g.yaml"))
    assert {j["status"] for j in by_stage(queue)["tune"]} == {"blocked"}

    first = queue.claim("w", 30, stages_filter=["search"])
    queue.complete(first.lease, {"value": first.params["value"]})
    assert {j["status"] for j in by_stage(queue)["tune"]} == {"blocked"}
    snap = collect(queue.db)
    assert next(s for s in snap.stages if s.stage == "tune").waiting_on == "waiting on search: 1/3 done"

    run_stage(queue, "search", lambda job: ("done", {"value": job.params["value"]}))
    tune = by_stage(queue)["tune"]
    assert {j["status"] for j in tune} == {"pending"}
    assert [as_dict(j["resolved_params"])["value"] for j in tune] == [0.9, 0.9]  # from the max-value job
    assert {j["status"] for j in by_stage(queue)["use"]} == {"blocked"}  # still waits on tune


def test_references_resolve_to_upstream_outcomes(queue):
    queue.enqueue(parse_spec(textwrap.dedent(PIPELINE), "g.yaml"))
    search_ids = run_stage(queue, "search", lambda job: ("done", {"value": job.params["value"]}))
    run_stage(queue, "tune", lambda job: ("done", {}))
    use = by_stage(queue)["use"][0]
    resolved = as_dict(use["resolved_params"])
    assert resolved["best"]["metrics"] == {"value": 0.5} and resolved["best"]["job"] == search_ids[0]
    assert [r["job"] for r in resolved["all"]] == search_ids
    assert as_dict(use["provenance"])["best"] == search_ids[0]


def test_when_nothing_upstream_succeeded_downstream_jobs_fail_with_the_reason(queue):
    queue.enqueue(parse_spec(textwrap.dedent(PIPELINE), "g.yaml"))
    run_stage(queue, "search", lambda job: ("fail", "boom"))
    stages = by_stage(queue)
    assert {j["status"] for j in stages["tune"]} == {"failed"}
    assert "no upstream job succeeded" in stages["tune"][0]["error"]
    assert "3 failed" in stages["tune"][0]["error"]
    # and the failure propagates: nothing is left blocked forever
    assert {j["status"] for j in stages["use"]} == {"failed"}
    assert queue.in_read("read", work_summary).blocked == 0


def test_one_success_is_enough_by_default_but_not_with_require_all(queue):
    text = textwrap.dedent(PIPELINE).replace("needs: [search]\n", "needs: [search]\n    require_all: true\n")
    queue.enqueue(parse_spec(text, "g.yaml"))
    run_stage(queue, "search", lambda job: ("done", {"value": 1.0}) if job.params["value"] == 0.9 else ("fail", "x"))
    tune = by_stage(queue)["tune"]
    assert {j["status"] for j in tune} == {"failed"}
    assert "require_all" in tune[0]["error"]


def test_a_stage_added_after_its_upstream_finished_starts_at_once(queue):
    head = "sweep: dep\nstages:\n  search: {kind: noop, grid: {value: [1, 2]}, params: {checkpoint: false}}\n"
    queue.enqueue(parse_spec(head, "g.yaml"))
    run_stage(queue, "search", lambda job: ("done", {"value": job.params["value"]}))
    more = head + "  after: {kind: tests.kinds:echo, needs: [search], params: {m: {best_of: search, metric: value}}}\n"
    queue.enqueue(parse_spec(more, "g.yaml"))
    assert by_stage(queue)["after"][0]["status"] == "pending"


def test_a_missing_metric_fails_the_hand_off_with_a_clear_reason(queue):
    queue.enqueue(parse_spec(textwrap.dedent(PIPELINE), "g.yaml"))
    run_stage(queue, "search", lambda job: ("done", {"other": 1}))
    tune = by_stage(queue)["tune"][0]
    assert tune["status"] == "failed"
    assert "no finished job of stage 'search' reported metric 'value'" in tune["error"]
