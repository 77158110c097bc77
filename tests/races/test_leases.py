"""claim x reap of an expired lease, and fail x complete on one job by a zombie and its successor.

A lease that expired belongs to a zombie: a worker that froze (SIGSTOP, a long GC, a lost network)
and may wake at any moment. `claim(..., ttl_s=-1)` hands out a lease that is already expired, so
no test waits for a clock.
"""

from __future__ import annotations

import sqlalchemy as sa

from sweeper.errors import LeaseLost

from .kit import Competitor, events_of, let_competitor_run, park_at, status_of, two_stage_grid, violations

ROUNDS = 8


def test_reaper_racing_a_claim_or_the_zombies_renewal_leaves_one_owner(workers, watch):
    """The reaper reads the expired lease, then (even rounds) another worker reaps and claims the
    job, or (odd rounds) the zombie wakes and renews. Either way the job ends with one owner and
    the interruption is counted once."""
    reaper, zombie_q, other = workers.queue(), workers.queue(), workers.queue(reap_every_s=0.0)
    problems: list[str] = []
    for i in range(2 * ROUNDS):
        spec = two_stage_grid(f"reap-{i}", upstream=1)
        reaper.enqueue(spec)
        zombie = zombie_q.claim("zombie", -1, sweep=spec.name)  # expired at once
        assert zombie is not None
        if i % 2 == 0:
            comp = Competitor(lambda sweep=spec.name: other.claim("successor", 60, sweep=sweep))
        else:
            comp = Competitor(lambda lease=zombie.lease: zombie_q.renew(lease, 60))
        reaper.race_hook = park_at("reap-read", lambda comp=comp: let_competitor_run(comp, watch))
        reaper.reap_expired()
        comp.join()
        reaper.race_hook = lambda name: None
        row = status_of(reaper.db, zombie.id)
        lost = events_of(reaper.db, zombie.id, "lease_lost")
        if i % 2 == 0:
            successor = comp.result
            ok = (
                comp.error is None
                and successor is not None
                and successor.id == zombie.id
                and (row.status, row.interruptions, lost, row.attempt) == ("running", 1, 1, 2)
                and row.lease_token == successor.lease.token
            )
        else:
            renewed = comp.error is None
            ok = (renewed and (row.status, row.interruptions, lost) == ("running", 0, 0)) or (
                isinstance(comp.error, LeaseLost) and (row.status, row.interruptions, lost) == ("pending", 1, 1)
            )
            ok = ok and (row.lease_token == zombie.lease.token) == renewed
        if not ok:
            problems.append(f"round {i}: {tuple(row)}, {lost} lease_lost events, competitor {comp.error!r}")
        problems += [f"round {i}: {v}" for v in violations(reaper.db, spec)]
    assert not problems, problems[:5]


def test_zombie_failure_racing_its_successors_completion_keeps_the_success(workers, watch):
    """max_failures 1: had the zombie's failure counted after the takeover, the job and its
    dependent stage would fail. Even rounds: the zombie reads its row, the successor takes over and completes, then
    the zombie writes. Odd rounds: the successor has written done and settles while the zombie
    fails."""
    zq, sq = workers.queue(), workers.queue(reap_every_s=0.0)
    problems: list[str] = []
    for i in range(2 * ROUNDS):
        spec = two_stage_grid(f"zombie-{i}", upstream=1, max_failures=1)
        zq.enqueue(spec)
        zombie = zq.claim("zombie", -1, sweep=spec.name)
        assert zombie is not None
        fail = Competitor(lambda lease=zombie.lease: zq.fail(lease, "Traceback: zombie woke up"))
        if i % 2 == 0:
            # PostgreSQL: the successor takes over and completes while the zombie is parked, so
            # the zombie's write must be refused. SQLite: the zombie holds the write lock, so its
            # failure (of a lease not yet taken over) comes first, and there is nothing to take over.
            first_wins = watch is None

            def take_over_and_complete(sweep=spec.name):
                job = sq.claim("successor", 60, sweep=sweep)
                if job is not None:
                    sq.complete(job.lease, {"value": 1})
                return job

            succeed = Competitor(take_over_and_complete)
            zq.race_hook = park_at("fail-read", lambda c=succeed: let_competitor_run(c, watch))
            try:
                fail.fn()
                zombie_recorded = True
            except LeaseLost:
                zombie_recorded = False
            succeed.join()
            errors = [succeed.error]
            if zombie_recorded != first_wins or (succeed.result is None) != first_wins:
                problems.append(f"round {i}: zombie recorded {zombie_recorded}, successor ran {succeed.result}")
        else:
            first_wins = False
            job = sq.claim("successor", 60, sweep=spec.name)
            assert job is not None and job.id == zombie.id
            sq.race_hook = park_at("settle-read", lambda c=fail: let_competitor_run(c, watch))
            sq.complete(job.lease, {"value": 1})
            fail.join()
            errors = [None if isinstance(fail.error, LeaseLost) else fail.error or AssertionError("zombie wrote")]
        zq.race_hook = sq.race_hook = lambda name: None
        row = status_of(zq.db, zombie.id)
        want, want_b = (("failed", 1), "failed") if first_wins else (("done", 0), "pending")
        if (row.status, row.failures) != want or any(errors):
            problems.append(f"round {i}: job {tuple(row)}, errors {errors}")
        with zq.db.read() as conn:
            b = conn.execute(sa.text("SELECT status FROM jobs WHERE sweep = :s AND stage = 'b'"), {"s": spec.name})
            if b.scalar_one() != want_b:
                problems.append(f"round {i}: dependent stage not {want_b}")
        problems += [f"round {i}: {v}" for v in violations(zq.db, spec)]
    assert not problems, problems[:5]
