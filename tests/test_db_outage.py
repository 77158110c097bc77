"""Database outages under real workers: a PostgreSQL restart, cut connections, a server that stays
down past the limit, and one that is down when a worker starts or while a job restores.

The promise: a worker rides out an outage shorter than its limit (one line when the database goes
away, one when it is back, no traceback, the running job kept and not charged a failure), and
past the limit it exits with code 3 and a clear message, leaving its job for the next worker.
Every test that stops PostgreSQL starts it again in a finally (pg.restored).
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from .chaos import pg
from .conftest import run_cli, start_worker, stop_process, wait_for

# serial: these tests stop and restart the PostgreSQL server (README, Development).
pytestmark = [pytest.mark.postgres, pytest.mark.serial]


class Queue:
    """A grid enqueued on a PostgreSQL database, and short-lived reads of it (they survive restarts)."""

    def __init__(self, tmp_path: Path, url: str, grid: str) -> None:
        self.tmp = tmp_path
        self.url = url
        self.state = tmp_path / "state"
        self.counter = tmp_path / "counter"
        self.counter.mkdir()
        path = tmp_path / "grid.yaml"
        path.write_text(textwrap.dedent(grid).replace("COUNTER", str(self.counter)).replace("TMP", str(tmp_path)))
        proc = run_cli("enqueue", str(path), "--state", str(self.state), "--db", url)
        assert proc.returncode == 0, proc.stderr
        self.procs: list = []

    def worker(self, *extra: str, name: str = "worker") -> tuple:
        log = self.tmp / f"{name}.log"
        args = ["--state", str(self.state), "--db", self.url, "--no-tracking", "--retry-backoff", "0"]
        proc = start_worker(*args, *extra, log=log)
        self.procs.append(proc)
        return proc, log

    def scalar(self, sql: str, **params):
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(sql), params).scalar()
        finally:
            engine.dispose()

    def job(self) -> dict:
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return dict(conn.execute(sa.text("select * from jobs")).mappings().one())
        finally:
            engine.dispose()

    def events(self) -> list[str]:
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text("select type from events order by id")).scalars())
        finally:
            engine.dispose()

    def checkpoints(self) -> int:
        return self.scalar("select coalesce(max(seq), 0) from checkpoints")

    def counts(self) -> list[int]:
        return [len(p.read_text().split()) for p in self.counter.iterdir()]


@pytest.fixture
def queue_on(pg_url, tmp_path):
    made: list[Queue] = []

    def make(grid: str) -> Queue:
        q = Queue(tmp_path, pg_url, grid)
        made.append(q)
        return q

    with pg.restored(pg_url):
        yield make
    for q in made:
        for p in q.procs:
            stop_process(p)


SLOW = """
sweep: outage
stages:
  slow: {kind: noop, params: {steps: 40, step_s: 0.2, checkpoint: true, counter_dir: COUNTER}}
"""


def _lines(log: Path, text: str) -> int:
    return sum(text in line for line in log.read_text().splitlines())


def test_worker_rides_out_a_postgres_outage_mid_job_with_one_line_each_way(queue_on):
    q = queue_on(SLOW)
    worker, log = q.worker("--lease-ttl", "10")
    wait_for(lambda: q.checkpoints() >= 3, what="three checkpoints")
    # A restart that takes 4 s: longer than a heartbeat interval, so the job's thread and the
    # heartbeat thread both find the database gone, and still there is one line each way.
    pg.stop(q.url)
    try:
        time.sleep(4)
    finally:
        pg.ensure_running(q.url)
    assert worker.wait(timeout=120) == 0, log.read_text()

    job = q.job()
    assert (job["status"], job["attempt"], job["failures"], job["interruptions"]) == ("done", 1, 0, 0), job
    assert "lease_lost" not in q.events()  # the heartbeat kept the lease through the restart
    assert q.counts() == [1]
    text = log.read_text()
    assert _lines(log, "database unreachable") == 1, text
    assert _lines(log, "database is back") == 1, text
    assert "Traceback" not in text


def test_worker_survives_pg_ctlcluster_restart_and_keeps_its_job(queue_on):
    q = queue_on(SLOW)
    worker, log = q.worker("--lease-ttl", "10")
    wait_for(lambda: q.checkpoints() >= 3, what="three checkpoints")
    pg.restart(q.url)
    assert worker.wait(timeout=120) == 0, log.read_text()
    job = q.job()
    assert (job["status"], job["attempt"], job["failures"], job["interruptions"]) == ("done", 1, 0, 0), job
    assert "lease_lost" not in q.events()
    assert q.counts() == [1]
    assert "Traceback" not in log.read_text()


def test_connections_cut_by_pg_terminate_backend_are_reopened_silently(queue_on):
    q = queue_on(SLOW)
    worker, log = q.worker("--lease-ttl", "10")
    wait_for(lambda: q.checkpoints() >= 2, what="two checkpoints")
    cut = 0
    for _ in range(8):
        cut += pg.terminate_backends(q.url)
        time.sleep(0.3)
    assert cut >= 4  # the worker had connections open, and they were cut
    assert worker.wait(timeout=120) == 0, log.read_text()
    job = q.job()
    assert (job["status"], job["attempt"], job["failures"], job["interruptions"]) == ("done", 1, 0, 0)
    assert q.counts() == [1]
    assert "Traceback" not in log.read_text()


def test_worker_gives_up_past_the_outage_limit_and_the_next_one_resumes_the_job(queue_on):
    q = queue_on(SLOW)
    worker, log = q.worker("--lease-ttl", "3", "--db-outage-limit", "3")
    wait_for(lambda: q.checkpoints() >= 3, what="three checkpoints")
    done_before = q.checkpoints()
    pg.stop(q.url)
    try:
        code = worker.wait(timeout=90)
    finally:
        pg.ensure_running(q.url)
    text = log.read_text()
    assert code == 3, text
    assert "giving up: database" in text and "did not answer for 3s" in text, text
    assert "Traceback" not in text
    assert _lines(log, "database unreachable") == 1, text

    nxt, log2 = q.worker("--lease-ttl", "3", "--wait", "--poll", "0.2", name="next")
    assert nxt.wait(timeout=120) == 0, log2.read_text()
    job = q.job()
    assert (job["status"], job["failures"]) == ("done", 0)
    assert job["result"]["resumed_from"] >= done_before  # from its checkpoint, not from zero
    assert q.counts() == [1]


def test_an_outage_while_a_job_restores_is_not_counted_as_its_failure(queue_on, tmp_path):
    gate = tmp_path / "gate"
    q = queue_on(
        """
        sweep: gated
        stages:
          a: {kind: "tests.chaos.kinds:gated", params: {gate: "TMP/gate"}}
        """
    )
    worker, log = q.worker("--lease-ttl", "15", "--db-outage-limit", "60")
    wait_for(lambda: Path(f"{gate}.started").exists(), what="the job to start")
    pg.stop(q.url)
    try:
        gate.write_text("go")  # the job now reads its checkpoints from a database that is down
        time.sleep(2)
    finally:
        pg.ensure_running(q.url)
    assert worker.wait(timeout=120) == 0, log.read_text()
    job = q.job()
    assert (job["status"], job["attempt"], job["failures"]) == ("done", 1, 0), job["error"]
    assert "Traceback" not in log.read_text()


def test_a_worker_started_while_the_database_is_down_waits_for_it(queue_on):
    q = queue_on(
        """
        sweep: late
        stages:
          a: {kind: noop, params: {steps: 2, step_s: 0.05, counter_dir: COUNTER}}
        """
    )
    pg.stop(q.url)
    try:
        worker, log = q.worker("--db-outage-limit", "60")
        wait_for(lambda: "database unreachable" in log.read_text(), timeout=60, what="the worker to notice")
    finally:
        pg.ensure_running(q.url)
    assert worker.wait(timeout=120) == 0, log.read_text()
    assert q.job()["status"] == "done"
    text = log.read_text()
    assert _lines(log, "database unreachable") == 1 and _lines(log, "database is back") == 1, text
    assert "Traceback" not in text


def test_a_heartbeat_that_gives_up_stops_its_job_and_its_worker_claims_nothing_more(queue_on):
    """Only the heartbeat meets the outage (the job does not touch the database between steps). Once
    it gives up, the job is stopped, checkpointed and released when the database is back, and the
    worker exits 3; it never claims another job to run without renewals (which a second worker
    would take over when the lease ran out, and run a second time)."""
    q = queue_on(
        """
        sweep: beat
        stages:
          a: {kind: noop, grid: {value: [1, 2]}, params: {steps: 300, step_s: 0.05, checkpoint: false, counter_dir: COUNTER}}
        """
    )
    worker, log = q.worker("--lease-ttl", "3", "--db-outage-limit", "4")
    wait_for(lambda: (q.scalar("select max(progress) from jobs") or 0) > 0, what="a renewal with progress")
    pg.stop(q.url)
    try:
        # the heartbeat's renewal gives up after 4 s; bring the database back right then, well within
        # the 4 s that the worker's next write (a checkpoint, or a claim) may wait for it
        wait_for(
            lambda: "gave up" in log.read_text() or "lease lost" in log.read_text(),
            timeout=60,
            what="the heartbeat to give up",
        )
    finally:
        pg.ensure_running(q.url)
    code = worker.wait(timeout=120)
    text = log.read_text()
    assert code == 3, text
    assert "giving up" in text and "Traceback" not in text, text
    assert _lines(log, "claimed") == 1, text  # no job started without a heartbeat
    assert "released" in q.events()  # the stopped job was handed back, not left to expire

    nxt, log2 = q.worker("--lease-ttl", "3", "--wait", "--poll", "0.2", name="next")
    assert nxt.wait(timeout=120) == 0, log2.read_text()
    assert q.scalar("select count(*) from jobs where status = 'done'") == 2
    assert sorted(q.counts()) == [1, 1]
