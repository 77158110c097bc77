"""complete x complete on the last two upstream jobs: the dependent stage must always unblock.

Issue 10's reproduction: stage a (2 jobs) -> stage b. Two workers complete the two a jobs at the
same moment. At READ COMMITTED each saw the other's job still running and neither unblocked b
(11 of 30 stuck on PostgreSQL). The settle lock serializes the two settles.
"""

from __future__ import annotations

import threading

import pytest

from .kit import Competitor, let_competitor_run, mark_at, park_at, two_stage_grid, violations

ROUNDS = 30


def _claim_both(qa, qb, sweep):
    ja, jb = qa.claim("wa", 60, sweep=sweep), qb.claim("wb", 60, sweep=sweep)
    assert ja is not None and jb is not None and {ja.stage, jb.stage} == {"a"}
    return ja, jb


def test_barrier_release_of_two_completes_never_strands_the_stage(workers):
    """The issue's reproduction as written: two threads released by one Barrier, 30 rounds."""
    qa, qb = workers.queue(), workers.queue()
    stuck, problems = 0, []
    for i in range(ROUNDS):
        spec = two_stage_grid(f"barrier-{i}")
        qa.enqueue(spec)
        ja, jb = _claim_both(qa, qb, spec.name)
        gate = threading.Barrier(2)
        errors: list[BaseException] = []

        def finish(queue, job, gate=gate, errors=errors):
            gate.wait(timeout=60)
            try:
                queue.complete(job.lease, {"value": job.params["value"]})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=finish, args=a) for a in ((qa, ja), (qb, jb))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        found = violations(qa.db, spec)
        stuck += any("blocked" in v for v in found)
        problems += [f"round {i}: {v}" for v in found] + [f"round {i}: {e!r}" for e in errors]
    assert stuck == 0 and not problems, f"{stuck} of {ROUNDS} rounds stuck: {problems[:5]}"


def _forced_round(qa, qb, watch, i: int, prefix: str, park: str = "settle-read") -> list[str]:
    """A completes job 1 and parks at `park` (after reading the upstream states, or right after
    writing its own row, holding it); B completes job 2 meanwhile."""
    spec = two_stage_grid(f"{prefix}-{i}")
    qa.enqueue(spec)
    ja, jb = _claim_both(qa, qb, spec.name)
    b_read = threading.Event()
    comp = Competitor(lambda: qb.complete(jb.lease, {"value": jb.params["value"]}), at_point=b_read)
    qb.race_hook = mark_at("settle-read", b_read)
    qa.race_hook = park_at(park, lambda: let_competitor_run(comp, watch))
    qa.complete(ja.lease, {"value": ja.params["value"]})
    comp.join()
    qa.race_hook = qb.race_hook = lambda name: None
    found = violations(qa.db, spec)
    if comp.error is not None:
        found.append(f"competitor raised {comp.error!r}")
    return found


def test_forced_interleaving_of_two_settles_never_strands_the_stage(workers, watch):
    """Both completes read the upstream states before either commits, if the queue lets them."""
    qa, qb = workers.queue(), workers.queue()
    problems: list[str] = []
    for i in range(ROUNDS):
        problems += [f"round {i}: {v}" for v in _forced_round(qa, qb, watch, i, "forced")]
    assert not problems, problems[:5]


def test_two_completes_both_in_flight_settle_one_after_the_other(workers, watch):
    """A parks holding its freshly written row: B finds no upstream job it can share-lock and
    takes the settle lock; then A does too. The last of the two to hold it unblocks b."""
    qa, qb = workers.queue(), workers.queue()
    problems: list[str] = []
    for i in range(ROUNDS // 2):
        problems += [f"round {i}: {v}" for v in _forced_round(qa, qb, watch, i, "inflight", park="complete-wrote")]
    assert not problems, problems[:5]


@pytest.mark.postgres
def test_without_the_settle_lock_the_forced_interleaving_strands_the_stage(pg_url):
    """The check above can fail: with the lock switched off, every forced round strands b."""
    from .kit import LockWatch, Workers

    w, watch = Workers(pg_url), LockWatch(pg_url)
    try:
        qa, qb = w.queue(_settle_lock=False), w.queue(_settle_lock=False)
        stuck = sum(
            any("blocked while all" in v for v in _forced_round(qa, qb, watch, i, "unlocked")) for i in range(5)
        )
    finally:
        watch.close()
        w.close()
    assert stuck == 5
