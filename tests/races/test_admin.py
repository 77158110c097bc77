"""enqueue x enqueue, cancel x complete, retry x claim: admin commands racing workers.

Each test parks one transaction between its read and its write and runs the other there
(kit.py), for several rounds, and checks the invariants after every round.
"""

from __future__ import annotations

import sqlalchemy as sa

from sweeper.errors import LeaseLost

from ..conftest import run_cli
from .kit import Competitor, events_of, let_competitor_run, park_at, status_of, two_stage_grid, violations

ROUNDS = 8


def test_two_enqueues_of_the_same_grid_add_each_job_once(workers, watch):
    """The second enqueue used to insert the same jobs again: IntegrityError, a traceback."""
    qa, qb = workers.queue(), workers.queue()
    problems: list[str] = []
    for i in range(ROUNDS):
        spec = two_stage_grid(f"enq-{i}")
        comp = Competitor(lambda spec=spec: qb.enqueue(spec))
        qa.race_hook = park_at("enqueue-read", lambda comp=comp: let_competitor_run(comp, watch))
        first = qa.enqueue(spec)
        comp.join()
        if comp.error is not None:
            problems.append(f"round {i}: second enqueue raised {comp.error!r}")
            continue
        if sorted([len(first.new), len(comp.result.new)]) != [0, len(spec.jobs)]:
            problems.append(f"round {i}: new jobs {len(first.new)} + {len(comp.result.new)}")
        problems += [f"round {i}: {v}" for v in violations(qa.db, spec)]
        problems += [f"round {i}: {j.id} enqueued twice" for j in spec.jobs if events_of(qa.db, j.id, "enqueued") != 1]
    assert not problems, problems[:5]


def test_cancel_never_turns_a_done_job_into_cancelled(workers, watch):
    """Rounds alternate: cancel parked after its read while complete runs, and complete parked
    after writing `done` (in its settle) while cancel runs. A done job keeps its result."""
    admin, worker = workers.queue(), workers.queue()
    problems: list[str] = []
    for i in range(2 * ROUNDS):
        spec = two_stage_grid(f"cancel-{i}")
        admin.enqueue(spec)
        job = worker.claim("w", 60, sweep=spec.name)
        assert job is not None
        finish = Competitor(lambda job=job: worker.complete(job.lease, {"value": 1}))
        cancel = Competitor(lambda job=job: admin.cancel([job.id]))
        if i % 2 == 0:
            admin.race_hook = park_at("cancel-read", lambda c=finish: let_competitor_run(c, watch))
            cancel.fn()
            finish.join()
            if finish.error is not None and not isinstance(finish.error, LeaseLost):
                problems.append(f"round {i}: complete raised {finish.error!r}")
        else:
            worker.race_hook = park_at("settle-read", lambda c=cancel: let_competitor_run(c, watch))
            finish.fn()
            cancel.join()
            if cancel.error is not None:
                problems.append(f"round {i}: cancel raised {cancel.error!r}")
        admin.race_hook = worker.race_hook = lambda name: None
        row = status_of(admin.db, job.id)
        done, cancelled = events_of(admin.db, job.id, "done"), events_of(admin.db, job.id, "cancelled")
        if (row.status, done, cancelled) not in {("done", 1, 0), ("cancelled", 0, 1)}:
            problems.append(f"round {i}: job is {row.status} after {done} done and {cancelled} cancelled events")
        problems += [f"round {i}: {v}" for v in violations(admin.db, spec)]
    assert not problems, problems[:5]


def test_retry_racing_another_retry_and_a_claim_never_resets_a_running_job(workers, watch):
    """Admin A reads a failed job; meanwhile admin B retries it and a worker claims it. A's write
    must not make the running job pending again (a second worker would then run it too)."""
    qa, qb, worker, other = workers.queue(), workers.queue(), workers.queue(), workers.queue()
    problems: list[str] = []
    for i in range(ROUNDS):
        spec = two_stage_grid(f"retry-{i}", upstream=1, max_failures=1)
        qa.enqueue(spec)
        job = worker.claim("w", 60, sweep=spec.name)
        assert worker.fail(job.lease, "boom", retry=False) == "failed"
        claimed: list = []

        def retry_then_claim(job_id=job.id, claimed=claimed, sweep=spec.name):
            qb.retry([job_id])
            claimed.append(worker.claim("w2", 60, sweep=sweep))

        comp = Competitor(retry_then_claim)
        qa.race_hook = park_at("retry-read", lambda comp=comp: let_competitor_run(comp, watch))
        qa.retry([job.id])
        comp.join()
        qa.race_hook = lambda name: None
        if comp.error is not None:
            problems.append(f"round {i}: competitor raised {comp.error!r}")
        again = other.claim("w3", 60, sweep=spec.name)
        row = status_of(qa.db, job.id)
        if row.status != "running" or again is not None or events_of(qa.db, job.id, "retried") != 1:
            problems.append(
                f"round {i}: job {row.status}, second claim {again and again.id}, "
                f"{events_of(qa.db, job.id, 'retried')} retried events"
            )
        problems += [f"round {i}: {v}" for v in violations(qa.db, spec)]
    assert not problems, problems[:5]


def test_stage_left_blocked_by_an_older_version_heals_on_the_next_idle_claim(workers):
    """All of a is done, b still blocked (as an older sweeper could leave it): a claim frees b."""
    q = workers.queue(reap_every_s=0.0)  # look on every idle claim, not once a second
    spec = two_stage_grid("heal")
    q.enqueue(spec)
    while (job := q.claim("w", 60, stages_filter=["a"])) is not None:
        q.complete(job.lease, {"value": 1})
    with q.db.write() as conn:  # what the write skew left behind: all of a done, b never unblocked
        conn.execute(sa.text("UPDATE jobs SET status = 'blocked', resolved_params = NULL WHERE stage = 'b'"))
    assert any("blocked while all" in v for v in violations(q.db, spec))
    job = q.claim("w", 60)
    assert job is not None and job.stage == "b"
    assert not violations(q.db, spec)


def test_work_wait_finishes_a_sweep_whose_stage_an_older_version_left_blocked(workers, db_url, tmp_path):
    """`sweeper work --wait` used to poll such a sweep forever; now its idle claim heals the stage."""
    q = workers.queue()
    spec = two_stage_grid("heal-cli")
    q.enqueue(spec)
    while (job := q.claim("w", 60, stages_filter=["a"])) is not None:
        q.complete(job.lease, {"value": 1})
    with q.db.write() as conn:
        conn.execute(sa.text("UPDATE jobs SET status = 'blocked', resolved_params = NULL WHERE stage = 'b'"))
    state = tmp_path / "worker-state"
    proc = run_cli(
        "work", "--wait", "--poll", "0.2", "--no-tracking", "--db", db_url, "--state", str(state), timeout=180
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert status_of_stage(q, "b") == ["done"]
    assert not violations(q.db, spec)


def status_of_stage(q, stage: str) -> list[str]:
    with q.db.read() as conn:
        return list(conn.execute(sa.text("SELECT status FROM jobs WHERE stage = :s"), {"s": stage}).scalars())
