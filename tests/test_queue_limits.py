"""Issue 10: job ids typed by a user are text, not LIKE patterns; retry backoff has a ceiling."""

from __future__ import annotations

import textwrap
import time

import pytest
import sqlalchemy as sa

from sweeper.errors import JobNotFound
from sweeper.grid.spec import parse_spec
from sweeper.store.db import open_database
from sweeper.store.queue import MAX_RETRY_BACKOFF_S, Queue
from sweeper.store.readmodel import resolve_job_id


@pytest.fixture
def queue(db_url):
    db = open_database(db_url)
    yield Queue(db, retry_backoff_s=5.0)
    db.dispose()


def test_underscore_and_percent_in_a_job_id_are_not_wildcards(queue):
    queue.enqueue(parse_spec("sweep: s\nstages:\n  a: {kind: noop, grid: {value: [1]}}\n", "g.yaml"))
    with queue.db.read() as conn:
        job_id = conn.execute(sa.text("SELECT id FROM jobs")).scalar_one()
    with queue.db.read() as conn:
        assert resolve_job_id(conn, job_id[:6]) == job_id
        for typed in ("____", "%%%%", job_id[:4] + "%", "_" + job_id[1:8]):
            with pytest.raises(JobNotFound):
                resolve_job_id(conn, typed)


def test_the_nineteenth_retry_of_twenty_waits_at_most_the_cap(queue):
    """Doubling from 5 s, the 19th retry waited 5 * 2**18 s (about 15 days) before the cap."""
    queue.enqueue(
        parse_spec(
            textwrap.dedent("""\
            sweep: s
            stages:
              a: {kind: noop, max_failures: 20, grid: {value: [1]}}
            """),
            "g.yaml",
        )
    )
    delays = []
    for _ in range(19):
        with queue.db.write() as conn:  # the backoff is what we read, not what we wait for
            conn.execute(sa.text("UPDATE jobs SET not_before = NULL"))
        job = queue.claim("w", 60)
        assert job is not None
        before = time.time()
        assert queue.fail(job.lease, "boom") == "pending"
        with queue.db.read() as conn:
            not_before = conn.execute(sa.text("SELECT not_before FROM jobs")).scalar_one()
        delays.append(not_before - before)
    assert delays[0] < 10  # the first retries still come quickly
    assert max(delays) <= MAX_RETRY_BACKOFF_S + 5  # + the database clock's skew against ours
    assert delays[-1] >= MAX_RETRY_BACKOFF_S - 5  # capped, not jittered below half of it
