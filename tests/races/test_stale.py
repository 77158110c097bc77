"""retry of an upstream job x a worker on its dependent: the hand-off is chosen again or marked stale.

Stage a (2 jobs) -> stage b (best_of a). a0 is done, a1 cancelled: the stage settles and b
resolves from a0 alone, pending. Then `retry a1` reopens stage a while a worker takes b:
  * retry parked after reading b (`reopen-read`) while the worker claims b: on PostgreSQL the
    claim commits first and the guarded UPDATE must not send a running job back to blocked, so
    b is running and stale; on SQLite the claim waits for the retry and finds b blocked;
  * the worker parked after writing b done (`complete-wrote`, holding its row) while retry runs:
    b ran on the old choice, so it is done and stale, never blocked with a result.
Every round: b is either blocked with no resolution and not stale, or it ran and is stale; never
pending on a choice made while a is open. Once a1 finishes, a blocked b resolves from both jobs.
"""

from __future__ import annotations

import textwrap

import sqlalchemy as sa

from sweeper.grid.spec import SweepSpec, parse_spec
from sweeper.store.db import jobs
from sweeper.store.stale import stale_jobs

from .kit import Competitor, let_competitor_run, park_at, violations

ROUNDS = 8


def grid(sweep: str) -> SweepSpec:
    return parse_spec(
        textwrap.dedent(f"""\
        sweep: {sweep}
        stages:
          a: {{kind: noop, grid: {{value: [0, 1]}}}}
          b: {{kind: noop, needs: [a], params: {{upstream: {{best_of: a, metric: value}}}}}}
        """),
        "grid.yaml",
    )


def settled_on_a0(admin, worker, spec: SweepSpec) -> tuple[str, str, str]:
    admin.enqueue(spec)
    a0, a1 = (j.id for j in spec.jobs if j.stage == "a")
    b = next(j.id for j in spec.jobs if j.stage == "b")
    claimed = worker.claim("w", 60, sweep=spec.name, stages_filter=["a"])
    assert claimed is not None and claimed.id == a0
    worker.complete(claimed.lease, {"value": 0})
    admin.cancel([a1])
    return a0, a1, b


def b_state(db, b: str) -> tuple[str, object, str | None]:
    with db.read() as conn:
        row = conn.execute(sa.select(jobs.c.status, jobs.c.resolved_params).where(jobs.c.id == b)).one()
        return row.status, row.resolved_params, stale_jobs(conn, ids=[b]).get(b)


def check_round(db, spec: SweepSpec, b: str, a1: str) -> list[str]:
    found = violations(db, spec)
    status, resolved, stale = b_state(db, b)
    if status == "blocked":
        if resolved is not None or stale is not None:
            found.append(f"b is blocked with resolution {resolved!r} / stale {stale!r}")
    elif status in ("running", "done"):
        if stale != f"upstream job(s) {a1} retried":
            found.append(f"b {status} on the old choice but not marked stale ({stale!r})")
    else:
        found.append(f"b is {status} while stage a is open again")
    return found


def finish_a1(admin, worker, spec: SweepSpec, b: str, a1: str) -> list[str]:
    """a1 runs; a b that was sent back to blocked now resolves from both a jobs."""
    claimed = worker.claim("w", 60, sweep=spec.name, stages_filter=["a"])
    if claimed is None or claimed.id != a1:
        return [f"a1 was not claimable after the retry ({claimed!r})"]
    worker.complete(claimed.lease, {"value": 1})
    status, resolved, _ = b_state(admin.db, b)
    if status == "pending" and resolved["upstream"]["job"] != a1:
        return [f"b resolved again but not from the best of both: {resolved['upstream']['job']}"]
    return violations(admin.db, spec)


def test_retry_parked_after_reading_the_dependent_while_a_worker_claims_it(workers, watch):
    admin, worker = workers.queue(), workers.queue()
    problems: list[str] = []
    outcomes = set()
    for i in range(ROUNDS):
        spec = grid(f"stale-claim-{i}")
        _, a1, b = settled_on_a0(admin, worker, spec)
        comp = Competitor(lambda spec=spec: worker.claim("w", 60, sweep=spec.name, stages_filter=["b"]))
        admin.race_hook = park_at("reopen-read", lambda comp=comp: let_competitor_run(comp, watch))
        retried = admin.retry([a1])
        comp.join()
        admin.race_hook = lambda name: None
        if comp.error is not None or retried != [a1]:
            problems.append(f"round {i}: claim raised {comp.error!r}, retry returned {retried}")
            continue
        outcomes.add(b_state(admin.db, b)[0])
        problems += [f"round {i}: {v}" for v in check_round(admin.db, spec, b, a1)]
        problems += [f"round {i}: {v}" for v in finish_a1(admin, worker, spec, b, a1)]
    assert not problems, problems[:5]
    # the interleaving happened as forced: the claim won on PostgreSQL, waited on SQLite
    assert outcomes == ({"running"} if watch is not None else {"blocked"}), outcomes


def test_a_dependent_completing_while_its_upstream_is_retried_is_done_and_stale(workers, watch):
    admin, worker = workers.queue(), workers.queue()
    problems: list[str] = []
    for i in range(ROUNDS):
        spec = grid(f"stale-done-{i}")
        _, a1, b = settled_on_a0(admin, worker, spec)
        claimed = worker.claim("w", 60, sweep=spec.name, stages_filter=["b"])
        assert claimed is not None and claimed.id == b
        comp = Competitor(lambda a1=a1: admin.retry([a1]))
        worker.race_hook = park_at("complete-wrote", lambda comp=comp: let_competitor_run(comp, watch))
        worker.complete(claimed.lease, {"value": 5})
        comp.join()
        worker.race_hook = lambda name: None
        if comp.error is not None or comp.result != [a1]:
            problems.append(f"round {i}: retry raised {comp.error!r} / returned {comp.result}")
            continue
        if b_state(admin.db, b)[0] != "done":
            problems.append(f"round {i}: b is {b_state(admin.db, b)[0]}, not done")
        problems += [f"round {i}: {v}" for v in check_round(admin.db, spec, b, a1)]
        problems += [f"round {i}: {v}" for v in finish_a1(admin, worker, spec, b, a1)]
    assert not problems, problems[:5]
