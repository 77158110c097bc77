"""Job state transitions on a real SQLite file, in this process (sweeper/store/queue.py, settle.py).

    blocked -> pending -> running -> done | failed | pending again (released, retried) ; cancelled

The PostgreSQL variants of the queue's promises are in tests/test_queue.py; the races between
transactions in tests/races/.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from sweeper.errors import LeaseLost
from sweeper.grid.spec import parse_spec
from sweeper.store.db import open_database
from sweeper.store.queue import Queue

PIPELINE = """
sweep: s
stages:
  a: {kind: noop, grid: {value: [1, 2]}}
  b: {kind: noop, needs: [a], params: {up: {best_of: a, metric: score}}}
"""


@pytest.fixture
def queue(tmp_path: Path):
    db = open_database(f"sqlite:///{tmp_path / 'queue.db'}")
    yield Queue(db, retry_backoff_s=0.0)
    db.dispose()


def enqueue(queue: Queue, text: str = PIPELINE) -> None:
    queue.enqueue(parse_spec(textwrap.dedent(text), "grid.yaml"))


def rows(queue: Queue, sql: str) -> list[tuple]:
    with queue.db.read() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql)).all()]


def status_by_stage(queue: Queue) -> list[tuple[str, str]]:
    return rows(queue, "select stage, status from jobs order by position")


def events_of(queue: Queue, job_id: str) -> list[str]:
    return [r[0] for r in rows(queue, f"select type from events where job_id = '{job_id}' order by id")]


def test_a_dependent_stage_is_enqueued_blocked_and_the_rest_pending(queue: Queue) -> None:
    enqueue(queue)
    assert status_by_stage(queue) == [("a", "pending"), ("a", "pending"), ("b", "blocked")]


def test_completing_the_last_upstream_job_resolves_the_hand_off_and_unblocks(queue: Queue) -> None:
    enqueue(queue)
    first, second = queue.claim("w", 30), queue.claim("w", 30)
    assert first and second and queue.claim("w", 30) is None  # b is still blocked
    queue.complete(first.lease, {"score": 0.4})
    assert status_by_stage(queue)[2] == ("b", "blocked")  # one upstream job still running
    queue.complete(second.lease, {"score": 0.9})
    dependent = queue.claim("w", 30)
    assert dependent is not None and dependent.stage == "b"
    assert dependent.params["up"]["job"] == second.id and dependent.params["up"]["metrics"] == {"score": 0.9}


def test_a_dependent_fails_with_the_reason_when_no_upstream_job_succeeded(queue: Queue) -> None:
    enqueue(queue)
    for _ in range(2):
        job = queue.claim("w", 30)
        assert job is not None
        assert queue.fail(job.lease, "boom", retry=False) == "failed"
    assert status_by_stage(queue) == [("a", "failed"), ("a", "failed"), ("b", "failed")]
    (error,) = rows(queue, "select error from jobs where stage = 'b'")[0]
    assert error == "upstream a finished with 2 failed: no upstream job succeeded"


def test_complete_records_the_result_the_finish_time_and_a_done_event(queue: Queue) -> None:
    enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop}\n")
    job = queue.claim("w", 30)
    assert job is not None
    queue.complete(job.lease, {"score": 1.5, "note": "x"})
    ((status, result, finished),) = rows(queue, "select status, result, finished_at from jobs")
    assert status == "done" and '"score": 1.5' in result and finished is not None
    assert events_of(queue, job.id) == ["enqueued", "claimed", "done"]


def test_a_claim_runs_one_attempt_with_a_fresh_token_each_time(queue: Queue) -> None:
    enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop}\n")
    first = queue.claim("w1", 30)
    assert first is not None and first.attempt == 1
    queue.release(first.lease, "SIGTERM")
    second = queue.claim("w2", 30)
    assert second is not None and second.id == first.id and second.attempt == 2
    assert second.lease.token != first.lease.token and second.interruptions == 1


def test_release_puts_the_job_back_pending_without_counting_a_failure(queue: Queue) -> None:
    enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop}\n")
    job = queue.claim("w", 30)
    assert job is not None
    assert queue.release(job.lease, "SIGTERM") == "pending"
    assert rows(queue, "select status, failures, interruptions from jobs") == [("pending", 0, 1)]
    assert events_of(queue, job.id)[-1] == "released"


def test_a_failure_with_attempts_left_goes_back_pending_then_fails_at_the_limit(queue: Queue) -> None:
    enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop, max_failures: 2}\n")
    job = queue.claim("w", 30)
    assert job is not None
    assert queue.fail(job.lease, "Traceback ...\nValueError: first") == "pending"
    again = queue.claim("w", 30)
    assert again is not None and again.failures == 1
    assert queue.fail(again.lease, "Traceback ...\nValueError: second") == "failed"
    ((status, failures, error),) = rows(queue, "select status, failures, error from jobs")
    assert (status, failures) == ("failed", 2) and error.endswith("ValueError: second")


def test_a_failure_that_is_not_retryable_fails_at_once(queue: Queue) -> None:
    enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop, max_failures: 5}\n")
    job = queue.claim("w", 30)
    assert job is not None
    assert queue.fail(job.lease, "bad params", retry=False) == "failed"
    assert rows(queue, "select status, failures from jobs") == [("failed", 1)]


def test_a_retried_failure_waits_for_its_backoff(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'queue.db'}")
    try:
        queue = Queue(db, retry_backoff_s=3600.0)  # an hour: never reached during this test
        enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop, max_failures: 3}\n")
        job = queue.claim("w", 30)
        assert job is not None
        assert queue.fail(job.lease, "boom") == "pending"
        assert queue.claim("w", 30) is None  # pending, but not before its backoff
        (not_before,) = rows(queue, "select not_before from jobs")[0]
        assert not_before is not None
    finally:
        db.dispose()


def test_every_write_after_a_cancel_is_refused_with_lease_lost(queue: Queue) -> None:
    enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop}\n")
    job = queue.claim("w", 30)
    assert job is not None
    assert queue.cancel([job.id]) == [job.id]
    for write in (
        lambda: queue.complete(job.lease, {"score": 1}),
        lambda: queue.fail(job.lease, "x"),
        lambda: queue.release(job.lease, "x"),
        lambda: queue.renew(job.lease, 30),
    ):
        with pytest.raises(LeaseLost):
            write()
    assert rows(queue, "select status, result from jobs") == [("cancelled", None)]


def test_cancel_leaves_finished_jobs_alone(queue: Queue) -> None:
    enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop, grid: {value: [1, 2]}}\n")
    job = queue.claim("w", 30)
    assert job is not None
    queue.complete(job.lease, {})
    cancelled = queue.cancel(stage="a")
    assert len(cancelled) == 1 and job.id not in cancelled
    assert sorted(r[0] for r in rows(queue, "select status from jobs")) == ["cancelled", "done"]


def test_cancelling_the_upstream_stage_settles_its_dependents(queue: Queue) -> None:
    enqueue(queue)
    queue.cancel(stage="a")
    assert status_by_stage(queue) == [("a", "cancelled"), ("a", "cancelled"), ("b", "failed")]


def test_retry_gives_a_failed_job_a_fresh_start(queue: Queue) -> None:
    enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop, max_failures: 1}\n")
    job = queue.claim("w", 30)
    assert job is not None
    queue.fail(job.lease, "boom")
    assert queue.retry([job.id]) == [job.id]
    assert rows(queue, "select status, failures, interruptions, finished_at from jobs") == [("pending", 0, 0, None)]
    assert queue.retry([job.id]) == []  # pending now: nothing to retry


def test_a_dependent_failed_by_its_upstream_waits_again_when_the_upstream_is_retried(queue: Queue) -> None:
    enqueue(queue)
    for _ in range(2):
        job = queue.claim("w", 30)
        assert job is not None
        queue.fail(job.lease, "boom", retry=False)
    assert status_by_stage(queue)[2] == ("b", "failed")
    queue.retry(stage="b")  # blocked again, and at once settled again: its upstream still all failed
    assert status_by_stage(queue)[2] == ("b", "failed")
    assert len(queue.retry(stage="a")) == 2
    assert status_by_stage(queue)[2] == ("b", "blocked")  # it never ran: it waits for the retried upstream
    for _ in range(2):
        job = queue.claim("w", 30)
        assert job is not None and job.stage == "a"
        queue.complete(job.lease, {"score": job.params["value"]})
    dependent = queue.claim("w", 30)
    assert dependent is not None and dependent.stage == "b" and dependent.params["up"]["metrics"] == {"score": 2}


def test_claim_can_be_limited_to_stages_and_to_a_sweep(queue: Queue) -> None:
    enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop}\n  c: {kind: noop}\n")
    enqueue(queue, "sweep: t\nstages:\n  a: {kind: noop}\n")
    picked = queue.claim("w", 30, stages_filter=["c"])
    assert picked is not None and (picked.sweep, picked.stage) == ("s", "c")
    other = queue.claim("w", 30, sweep="t")
    assert other is not None and (other.sweep, other.stage) == ("t", "a")
    assert queue.claim("w", 30, stages_filter=["c"]) is None


def test_renew_stores_progress_for_status_to_show(queue: Queue) -> None:
    enqueue(queue, "sweep: s\nstages:\n  a: {kind: noop}\n")
    job = queue.claim("w", 30)
    assert job is not None
    queue.renew(job.lease, 30, progress=0.25, message="epoch 1/4")
    assert rows(queue, "select progress, progress_message from jobs") == [(0.25, "epoch 1/4")]
