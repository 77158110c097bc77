"""Successive halving decides the same survivors whatever the workers, the finish order or the faults.

A 9 -> 3 -> 1 sweep of promote stages on a real SQLite file and a real PostgreSQL database. Every
job's `val_accuracy` is a fixed function of its `lr`, with ties, so the survivors are known in
advance: rung0 keeps lr 5 (0.9), then lr 2 and lr 3 (0.8 each; lr 6 also scores 0.8 but comes later
in the queue), and rung1 keeps lr 2 (0.93, tied with lr 3, earlier). Each round finishes the stages
in another way:

  * one worker in queue order, two workers in reverse order, four in a shuffled order;
  * forced: the last two completes of each rung interleaved inside their settle transactions
    (park at `settle-read`, the competitor runs meanwhile), as in test_settle.py;
  * killed mid-rung: a worker's lease expires with a job half done, another worker reaps and
    finishes it;
  * killed at the rung boundary: the transaction that completes a rung's last job dies at the
    settle (an exception in it rolls the complete and the promotion back together); its lease then
    expires and another worker finishes the job.

After every round the promoted jobs must continue exactly the expected upstream jobs, in rank
order, and the race kit's invariants must hold.
"""

from __future__ import annotations

import json
import random
import textwrap
import threading

import sqlalchemy as sa

from sweeper.grid.spec import SweepSpec, parse_spec
from sweeper.store.queue import ClaimedJob, Queue

from .kit import Competitor, Workers, let_competitor_run, mark_at, park_at, violations

ROUNDS = 18  # three of each of the six ways to finish a stage
LRS = list(range(1, 10))
SCORE = {0: {1: 0.5, 2: 0.8, 3: 0.8, 4: 0.3, 5: 0.9, 6: 0.8, 7: 0.1, 8: 0.2, 9: 0.4}, 1: {5: 0.91, 2: 0.93, 3: 0.93}}
SURVIVORS = {"rung1": [5, 2, 3], "rung2": [2]}  # the lr of the job each promoted job continues, by rank


class Crash(Exception):
    """A worker that dies inside its transaction."""


def grid(sweep: str) -> SweepSpec:
    return parse_spec(
        textwrap.dedent(f"""\
        sweep: {sweep}
        stages:
          rung0:
            kind: tests.kinds:echo
            params: {{max_epochs: 1, val_subset: 10}}
            grid: {{lr: {LRS}}}
          rung1:
            promote: {{stage: rung0, top: 3, by: val_accuracy, mode: max, max_epochs: 3}}
          rung2:
            promote: {{stage: rung1, top: 1, by: val_accuracy, mode: max, max_epochs: 6}}
        """),
        "grid.yaml",
    )


def result(job: ClaimedJob) -> dict[str, float]:
    if job.stage == "rung2":
        return {"val_accuracy": 0.95}
    return {"val_accuracy": SCORE[0 if job.stage == "rung0" else 1][job.params["lr"]]}


def claim_all(queues: list[Queue], sweep: str, stage: str) -> list[tuple[Queue, ClaimedJob]]:
    """Every claimable job, claimed in turn by the queues: (its worker's queue, the job)."""
    claimed = []
    for i in range(100):
        queue = queues[i % len(queues)]
        job = queue.claim(f"w{i % len(queues)}", 60, sweep=sweep)
        if job is None:
            break
        assert job.stage == stage, f"{job.stage} claimable while {stage} is not finished"
        claimed.append((queue, job))
    return claimed


def finish_rung(way: str, queues: list[Queue], workers: Workers, watch, sweep: str, stage: str, rnd: int) -> None:
    """Run every job of `stage` to done, the way `way` says."""
    if way == "killed-mid-rung":
        dead = queues[0].claim("dead", -1, sweep=sweep)  # its worker died: the lease is expired at once
        assert dead is not None and dead.stage == stage
        reaper = workers.queue(reap_every_s=0.0)  # every claim of it reaps expired leases first
        claimed = claim_all([reaper, *queues], sweep, stage)
        assert dead.id in {job.id for _, job in claimed}, "the dead worker's job was not taken over"
        for queue, job in claimed:
            queue.complete(job.lease, result(job))
        return
    claimed = claim_all(queues, sweep, stage)
    if way == "reverse":
        claimed.reverse()
    elif way == "shuffled":
        random.Random(rnd).shuffle(claimed)
    if way == "killed-at-boundary" and stage != "rung2":  # rung2 settles nothing: no boundary to die at
        *first, (queue, last) = claimed
        for q, job in first:
            q.complete(job.lease, result(job))
        # The worker of the rung's last job gets a lease that expires at once, completes the job
        # and dies inside that transaction, at the settle: the complete and the promotion roll back.
        queue.release(last.lease, "test: lease the job again, expired")
        doomed = queue.claim("doomed", -1, sweep=sweep)
        assert doomed is not None and doomed.id == last.id
        crashed = []

        def die(name: str) -> None:
            if name == "settle-read":
                crashed.append(name)
                raise Crash("worker killed inside the settle")

        queue.race_hook = die
        try:
            queue.complete(doomed.lease, result(doomed))
        except Crash:
            pass
        finally:
            queue.race_hook = lambda name: None
        assert crashed, "the complete never reached the settle"
        successor = workers.queue(reap_every_s=0.0)
        again = successor.claim("successor", 60, sweep=sweep)
        assert again is not None and again.id == last.id, "the killed worker's job was not taken over"
        successor.complete(again.lease, result(again))
        return
    if way != "forced" or len(claimed) < 2:  # rung2 has one job: nothing to interleave
        for queue, job in claimed:
            queue.complete(job.lease, result(job))
        return
    # forced: the last two completes interleave inside their settle transactions
    *first, (qa, ja), (qb, jb) = claimed
    for queue, job in first:
        queue.complete(job.lease, result(job))
    if qa is qb:
        qb = workers.spare  # a second worker's engine, as another process would have
    b_read = threading.Event()
    comp = Competitor(lambda: qb.complete(jb.lease, result(jb)), at_point=b_read)
    qb.race_hook = mark_at("settle-read", b_read)
    qa.race_hook = park_at("settle-read", lambda: let_competitor_run(comp, watch))
    qa.complete(ja.lease, result(ja))
    comp.join()
    qa.race_hook = qb.race_hook = lambda name: None
    assert comp.error is None, comp.error


def survivors(queue: Queue, spec: SweepSpec) -> dict[str, list[int]]:
    """For each rung, the lr of the upstream job each promoted job continues, in rank order."""
    with queue.db.read() as conn:
        rows = conn.execute(
            sa.text("SELECT id, stage, status, params, resolved_params FROM jobs WHERE sweep = :s ORDER BY position"),
            {"s": spec.name},
        ).all()

    def load(value):
        return json.loads(value) if isinstance(value, str) else value

    params = {r.id: load(r.resolved_params) or load(r.params) for r in rows}
    out: dict[str, list[int]] = {}
    for r in rows:
        if r.stage == "rung0":
            continue
        resolved = load(r.resolved_params)
        assert resolved is not None, f"{r.stage} job {r.id} is {r.status}, never resolved"
        out.setdefault(r.stage, []).append(params[resolved["continue_from"]]["lr"])
        assert resolved["max_epochs"] == (3 if r.stage == "rung1" else 6)
    return out


WAYS = ("in-order", "reverse", "shuffled", "forced", "killed-mid-rung", "killed-at-boundary")


def test_every_way_of_finishing_the_rungs_promotes_the_same_jobs(workers, watch):
    problems: list[str] = []
    workers.spare = workers.queue()
    for rnd in range(ROUNDS):
        way = WAYS[rnd % len(WAYS)]
        n_workers = (1, 2, 4)[rnd % 3]
        queues = [workers.queue() for _ in range(n_workers)]
        spec = grid(f"halving-{rnd}")
        queues[0].enqueue(spec)
        for stage in ("rung0", "rung1", "rung2"):
            finish_rung(way, queues, workers, watch, spec.name, stage, rnd)
            problems += [
                f"round {rnd} ({way}, {n_workers} workers) after {stage}: {v}" for v in violations(queues[0].db, spec)
            ]
        got = survivors(queues[0], spec)
        if got != SURVIVORS:
            problems.append(f"round {rnd} ({way}, {n_workers} workers): promoted {got}, expected {SURVIVORS}")
    assert not problems, problems[:5]
