"""The queue's promises, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import textwrap
import time

import pytest
import sqlalchemy as sa

from sweeper.errors import LeaseLost, SchemaMismatch
from sweeper.grid.spec import parse_spec
from sweeper.store.checkpoints import record_checkpoint
from sweeper.store.db import SCHEMA_VERSION, meta, open_database
from sweeper.store.queue import Queue
from sweeper.store.readmodel import work_summary


def grid(text: str):
    return parse_spec(textwrap.dedent(text), "grid.yaml")


THREE = """
sweep: s
stages:
  a: {kind: noop, grid: {value: [1, 2, 3]}}
"""


@pytest.fixture
def queue(db_url):
    db = open_database(db_url)
    yield Queue(db, retry_backoff_s=0.0)
    db.dispose()


def statuses(queue: Queue) -> dict[str, str]:
    with queue.db.read() as conn:
        return dict(conn.execute(sa.text("select id, status from jobs")).all())


def test_same_grid_twice_adds_nothing_and_an_edit_adds_only_new_jobs(queue):
    first = queue.enqueue(grid(THREE))
    assert (len(first.new), len(first.unchanged)) == (3, 0)
    again = queue.enqueue(grid(THREE))
    assert (len(again.new), len(again.unchanged), len(again.gone)) == (0, 3, 0)
    edited = queue.enqueue(grid(THREE.replace("[1, 2, 3]", "[2, 3, 4, 5]")))
    assert (len(edited.new), len(edited.unchanged), len(edited.gone)) == (2, 2, 1)
    assert len(statuses(queue)) == 5  # the job no longer in the file is left alone


def test_claims_follow_priority_then_fifo(queue):
    queue.enqueue(
        grid("""
        sweep: s
        stages:
          low: {kind: noop, grid: {value: [1, 2]}}
          high: {kind: noop, priority: 5, grid: {value: [3, 4]}}
        """)
    )
    order = []
    while (job := queue.claim("w", 30)) is not None:
        order.append(job.params["value"])
        queue.complete(job.lease, {})
    assert order == [3, 4, 1, 2]


def test_an_edited_priority_reorders_only_the_jobs_not_started_yet(queue):
    two = """
    sweep: s
    stages:
      first: {kind: noop, grid: {value: [1, 2]}}
      later: {kind: noop, grid: {value: [3, 4]}}
    """
    queue.enqueue(grid(two))
    started = queue.claim("w", 30)
    assert started.params["value"] == 1
    edited = queue.enqueue(grid(two.replace("first: {kind: noop,", "first: {kind: noop, priority: -1,")))
    assert len(edited.new) == 0 and len(edited.unchanged) == 4  # priority is not part of a job's identity
    assert sorted(j.params["value"] for j, old in edited.reprioritized) == [2] and edited.reprioritized[0][1] == 0
    with queue.db.read() as conn:
        priority = dict(conn.execute(sa.text("select id, priority from jobs")).all())
    assert priority[started.id] == 0  # the running job keeps its row as it was
    order = []
    while (job := queue.claim("w", 30)) is not None:
        order.append(job.params["value"])
        queue.complete(job.lease, {})
    assert order == [3, 4, 2]


def test_a_priority_edit_reaches_every_job_of_a_large_stage(queue):
    values = list(range(1234))  # more than one 500-job statement
    big = f"sweep: s\nstages:\n  a: {{kind: noop, grid: {{value: {values}}}}}\n"
    queue.enqueue(grid(big))
    edited = queue.enqueue(grid(big.replace("{kind: noop,", "{kind: noop, priority: 2,")))
    assert len(edited.reprioritized) == 1234
    with queue.db.read() as conn:
        assert conn.execute(sa.text("select priority, count(*) from jobs group by priority")).all() == [(2, 1234)]


def test_a_claimed_job_is_not_claimed_twice(queue):
    queue.enqueue(grid(THREE))
    ids = {queue.claim(f"w{i}", 30).id for i in range(3)}
    assert len(ids) == 3
    assert queue.claim("w9", 30) is None


def test_expired_lease_makes_the_job_claimable_with_one_more_interruption(queue):
    queue.enqueue(grid(THREE))
    job = queue.claim("w1", 0.2)
    time.sleep(0.4)
    queue.reap_expired()
    again = [queue.claim("w2", 30) for _ in range(3)]
    taken = next(j for j in again if j.id == job.id)
    assert taken.interruptions == 1 and taken.attempt == 2


def test_zombie_writes_are_refused(queue):
    queue.enqueue(grid(THREE))
    zombie = queue.claim("zombie", 0.2)
    time.sleep(0.4)
    queue.reap_expired()
    owner = next(j for j in iter(lambda: queue.claim("owner", 30), None) if j.id == zombie.id)
    with pytest.raises(LeaseLost):
        queue.renew(zombie.lease, 30)
    with pytest.raises(LeaseLost):
        queue.complete(zombie.lease, {"who": "zombie"})
    with pytest.raises(LeaseLost):
        record_checkpoint(queue.in_lease, zombie.lease, sha256="0" * 64, size=1, location=None, blob=b"x")
    queue.complete(owner.lease, {"who": "owner"})
    with queue.db.read() as conn:
        result = conn.execute(sa.text("select result from jobs where id = :i"), {"i": zombie.id}).scalar_one()
    assert "owner" in str(result)


def test_failures_retry_with_backoff_then_fail_and_keep_the_traceback(queue):
    queue.enqueue(grid("sweep: s\nstages:\n  a: {kind: noop, max_failures: 2}\n"))
    job = queue.claim("w", 30)
    assert queue.fail(job.lease, "Traceback (most recent call last):\nValueError: one") == "pending"
    job = queue.claim("w", 30)
    assert job is not None and job.failures == 1
    assert queue.fail(job.lease, "Traceback (most recent call last):\nValueError: two") == "failed"
    with queue.db.read() as conn:
        error = conn.execute(sa.text("select error from jobs")).scalar_one()
    assert "ValueError: two" in error


def test_release_counts_an_interruption_not_a_failure(queue):
    queue.enqueue(grid(THREE))
    job = queue.claim("w", 30)
    assert queue.release(job.lease, "SIGTERM") == "pending"
    again = queue.claim("w", 30)
    assert again.id == job.id and again.failures == 0 and again.interruptions == 1


def test_interruption_limit_fails_the_job(queue):
    queue.enqueue(grid("sweep: s\nstages:\n  a: {kind: noop, max_interruptions: 1}\n"))
    queue.release(queue.claim("w", 30).lease, "one")
    assert queue.release(queue.claim("w", 30).lease, "two") == "failed"


def test_retry_and_cancel(queue):
    queue.enqueue(grid(THREE))
    job = queue.claim("w", 30)
    queue.fail(job.lease, "boom", retry=False)
    assert queue.retry([job.id]) == [job.id]
    assert statuses(queue)[job.id] == "pending"
    running = queue.claim("w", 30)
    cancelled = queue.cancel(stage="a")
    assert len(cancelled) == 3
    with pytest.raises(LeaseLost):
        queue.renew(running.lease, 30)  # the worker of a cancelled job drops it


def test_a_newer_schema_is_refused_with_a_clear_message(db_url):
    db = open_database(db_url)
    with db.write() as conn:
        conn.execute(meta.update().values(value=str(SCHEMA_VERSION + 1)))
    db.dispose()
    with pytest.raises(SchemaMismatch, match="written by a newer sweeper"):
        open_database(db_url)


def test_summary_counts_what_is_left(queue):
    queue.enqueue(
        grid("""
        sweep: s
        stages:
          a: {kind: noop, grid: {value: [1, 2]}}
          b: {kind: noop, needs: [a]}
        """)
    )
    queue.claim("w", 30)
    s = queue.in_read("read", work_summary)
    assert (s.pending_now, s.running, s.blocked) == (1, 1, 1)


def test_release_all_running_puts_running_jobs_back_as_interrupted(queue):
    """Mirrored recovery's lease rewrite, through the queue: running jobs go back to pending with one
    interruption each (not a failure), their old leases refused; other jobs are not touched."""
    queue.enqueue(grid(THREE))
    first, second = queue.claim("gone-vm", 300), queue.claim("gone-vm", 300)
    queue.complete(second.lease, {"value": 2})
    third = queue.claim("gone-vm", 300)
    assert sorted(queue.release_all_running()) == sorted([first.id, third.id])
    assert statuses(queue) == {first.id: "pending", second.id: "done", third.id: "pending"}
    with queue.db.read() as conn:
        rows = conn.execute(sa.text("select id, interruptions, failures, lease_token from jobs")).all()
    assert {r.id: (r.interruptions, r.failures, r.lease_token) for r in rows} == {
        first.id: (1, 0, None),
        second.id: (0, 0, None),
        third.id: (1, 0, None),
    }
    with pytest.raises(LeaseLost):
        queue.renew(first.lease, 30)
    assert queue.release_all_running() == []
