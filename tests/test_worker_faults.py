"""Real `sweeper work` processes, killed, stopped and signalled for real.

The noop kind steps slowly, checkpoints a counter each step, and appends one line to
<counter_dir>/<job_id> when it finishes: that file proves a job ran to the end exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from .conftest import run_cli, start_worker, stop_process, wait_for
from .mlflow_template import install, template


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory) -> Path:
    return template(tmp_path_factory)


class Sweep:
    """A grid enqueued into a state directory, plus ways to look at its queue."""

    def __init__(self, tmp_path: Path, db_url: str, grid: str) -> None:
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.db_url = db_url
        self.counter = tmp_path / "counter"
        self.counter.mkdir()
        path = tmp_path / "grid.yaml"
        path.write_text(textwrap.dedent(grid).replace("COUNTER", str(self.counter)))
        proc = run_cli("enqueue", str(path), *self.args)
        assert proc.returncode == 0, proc.stderr
        self.engine = sa.create_engine(db_url)
        self.logs: list[Path] = []

    @property
    def args(self) -> list[str]:
        return ["--state", str(self.state), "--db", self.db_url]

    def worker(self, *extra: str) -> tuple:
        log = self.tmp / f"worker-{len(self.logs)}.log"
        self.logs.append(log)
        proc = start_worker(*self.args, "--no-tracking", "--retry-backoff", "0", *extra, log=log)
        return proc, log

    def jobs(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("select * from jobs order by position")).mappings().all()
        out = []
        for r in rows:
            row = dict(r)
            if isinstance(row["result"], str):
                row["result"] = json.loads(row["result"])
            out.append(row)
        return out

    def events(self, job_id: str) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.text("select type from events where job_id = :j order by id"), {"j": job_id}).scalars()
            )

    def checkpoints_of(self, job_id: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.text("select coalesce(max(seq), 0) from checkpoints where job_id = :j"), {"j": job_id}
            ).scalar_one()

    def counts(self) -> dict[str, int]:
        return {p.name: len(p.read_text().splitlines()) for p in self.counter.iterdir()}

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def sweep_factory(tmp_path):
    made: list[Sweep] = []
    procs: list = []

    def make(db_url: str, grid: str) -> Sweep:
        s = Sweep(tmp_path, db_url, grid)
        made.append(s)
        return s

    make.procs = procs
    yield make
    for p in procs:
        stop_process(p)
    for s in made:
        s.close()


SLOW_JOB = """
sweep: faults
stages:
  slow: {kind: noop, params: {steps: 40, step_s: 0.1, checkpoint: true, counter_dir: COUNTER}}
"""


def test_killed_worker_job_is_taken_over_and_continues_from_its_checkpoint(sweep_factory, db_url):
    sweep = sweep_factory(db_url, SLOW_JOB)
    first, _ = sweep.worker("--lease-ttl", "2")
    sweep_factory.procs.append(first)
    job_id = sweep.jobs()[0]["id"]
    wait_for(lambda: sweep.checkpoints_of(job_id) >= 5, what="five checkpoints")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)

    second, log = sweep.worker("--lease-ttl", "2", "--wait", "--poll", "0.2")
    sweep_factory.procs.append(second)
    assert second.wait(timeout=120) == 0, log.read_text()
    job = sweep.jobs()[0]
    assert job["status"] == "done"
    assert job["interruptions"] == 1 and job["failures"] == 0
    assert job["result"]["resumed_from"] >= 5  # continued, not restarted from zero
    assert "lease_lost" in sweep.events(job_id)
    assert sweep.counts() == {job_id: 1}


def test_zombie_worker_is_refused_and_the_result_is_the_new_owners(sweep_factory, sqlite_url):
    sweep = sweep_factory(sqlite_url, SLOW_JOB)
    zombie, zombie_log = sweep.worker("--lease-ttl", "2")
    sweep_factory.procs.append(zombie)
    job_id = sweep.jobs()[0]["id"]
    wait_for(lambda: sweep.checkpoints_of(job_id) >= 3, what="three checkpoints")
    os.kill(zombie.pid, signal.SIGSTOP)

    owner, owner_log = sweep.worker("--lease-ttl", "2", "--wait", "--poll", "0.2")
    sweep_factory.procs.append(owner)
    assert owner.wait(timeout=120) == 0, owner_log.read_text()
    assert sweep.jobs()[0]["status"] == "done"

    os.kill(zombie.pid, signal.SIGCONT)
    assert zombie.wait(timeout=60) == 0
    job = sweep.jobs()[0]
    assert job["result"]["attempt"] == 2  # the second claim's result, not the zombie's
    assert sweep.counts() == {job_id: 1}
    assert "lease" in zombie_log.read_text()


def test_sigterm_releases_the_job_without_a_failure_and_the_next_worker_resumes(sweep_factory, sqlite_url):
    sweep = sweep_factory(sqlite_url, SLOW_JOB)
    worker, log = sweep.worker()
    sweep_factory.procs.append(worker)
    job_id = sweep.jobs()[0]["id"]
    wait_for(lambda: sweep.checkpoints_of(job_id) >= 3, what="three checkpoints")
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, log.read_text()
    job = sweep.jobs()[0]
    assert (job["status"], job["failures"], job["interruptions"]) == ("pending", 0, 1)
    assert sweep.events(job_id)[-1] == "released"

    nxt, log = sweep.worker()
    sweep_factory.procs.append(nxt)
    assert nxt.wait(timeout=60) == 0, log.read_text()
    job = sweep.jobs()[0]
    assert job["status"] == "done" and job["result"]["resumed_from"] >= 3
    assert sweep.counts() == {job_id: 1}


def test_poison_job_fails_after_its_limit_and_the_others_finish(sweep_factory, sqlite_url):
    sweep = sweep_factory(
        sqlite_url,
        """
        sweep: poison
        stages:
          ok: {kind: noop, grid: {value: [1, 2, 3]}, params: {checkpoint: false}}
          bad: {kind: noop, params: {fail: true, checkpoint: false}, max_failures: 3}
        """,
    )
    worker, log = sweep.worker()
    sweep_factory.procs.append(worker)
    assert worker.wait(timeout=60) == 0, log.read_text()
    jobs = {j["stage"] + str(j["result"] and j["result"].get("value")): j for j in sweep.jobs()}
    bad = next(j for j in jobs.values() if j["stage"] == "bad")
    assert bad["status"] == "failed" and bad["failures"] == 3
    assert "Traceback (most recent call last)" in bad["error"] and "asked to fail" in bad["error"]
    assert [j["status"] for j in jobs.values() if j["stage"] == "ok"] == ["done"] * 3
    assert sweep.events(bad["id"]).count("retried") == 2


def test_bad_params_fail_at_once_without_retries(sweep_factory, sqlite_url):
    sweep = sweep_factory(
        sqlite_url,
        """
        sweep: badparam
        stages:
          a: {kind: noop, params: {bad_param: true, checkpoint: false}}
        """,
    )
    worker, log = sweep.worker()
    sweep_factory.procs.append(worker)
    assert worker.wait(timeout=60) == 0, log.read_text()
    job = sweep.jobs()[0]
    assert (job["status"], job["failures"], job["attempt"]) == ("failed", 1, 1)
    assert "can never succeed" in job["error"]


ZOMBIE_GRID = """
sweep: zombierun
stages:
  a: {kind: "tests.kinds:zombie_fails", params: {gate: GATE}}
"""


def test_a_zombies_failure_leaves_the_shared_run_to_the_live_attempt(tmp_path, mlflow_template):
    """The job raises in a worker that was frozen past its lease: the MLflow run (now the owner's)
    stays RUNNING, the zombie's buffered point is never written, and the owner finishes the run."""
    state, gate = tmp_path / "state", tmp_path / "gate"
    grid = tmp_path / "grid.yaml"
    grid.write_text(textwrap.dedent(ZOMBIE_GRID).replace("GATE", str(gate)))
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    install(mlflow_template, state)
    args = ["--state", str(state), "--lease-ttl", "2", "--retry-backoff", "0"]
    procs = []
    try:
        zombie = start_worker(*args, log=tmp_path / "zombie.log")
        procs.append(zombie)
        wait_for(lambda: Path(f"{gate}.zombie").exists(), timeout=120, what="the first attempt to park")
        os.kill(zombie.pid, signal.SIGSTOP)
        owner = start_worker(*args, "--wait", "--poll", "0.2", log=tmp_path / "owner.log")
        procs.append(owner)
        wait_for(lambda: Path(f"{gate}.owner").exists(), timeout=120, what="the owner to take the job over")

        client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("zombierun").experiment_id])
        assert run.info.status == "RUNNING" and run.data.tags["attempt"] == "2"

        Path(f"{gate}.go").touch()  # the zombie wakes up and its job raises
        os.kill(zombie.pid, signal.SIGCONT)
        assert zombie.wait(timeout=120) == 0, (tmp_path / "zombie.log").read_text()
        zombie_log = (tmp_path / "zombie.log").read_text()
        assert "lease" in zombie_log, zombie_log
        run = client.get_run(run.info.run_id)
        assert run.info.status == "RUNNING", f"the zombie closed the owner's run\n{zombie_log}"
        assert 99 not in [m.step for m in client.get_metric_history(run.info.run_id, "loss")]

        Path(f"{gate}.finish").touch()
        assert owner.wait(timeout=120) == 0, (tmp_path / "owner.log").read_text()
    finally:
        for proc in procs:
            stop_process(proc)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4, 5, 6]
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    with engine.connect() as conn:
        job = conn.execute(sa.text("select status, failures, result from jobs")).mappings().one()
    engine.dispose()
    assert (job["status"], job["failures"]) == ("done", 0)  # the zombie's failure was not counted


def test_supervisor_exits_non_zero_and_names_a_worker_killed_by_a_signal(sweep_factory, sqlite_url):
    sweep = sweep_factory(
        sqlite_url,
        """
        sweep: supervised
        stages:
          slow: {kind: noop, grid: {value: [1, 2]}, params: {steps: 30, step_s: 0.1, checkpoint: true, counter_dir: COUNTER}}
        """,
    )
    supervisor, log = sweep.worker("--workers", "2", "--lease-ttl", "2", "--wait", "--poll", "0.2")
    sweep_factory.procs.append(supervisor)

    def running_children() -> list[int]:
        with sweep.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text("select pid from workers where status = 'running' and current_job is not null")
                ).scalars()
            )

    pids = wait_for(lambda: len(running_children()) == 2 and running_children(), timeout=120, what="two workers")
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)  # what the kernel's OOM killer does
    code = supervisor.wait(timeout=180)
    text = log.read_text()
    assert code == 128 + signal.SIGKILL, text
    assert f"(pid {victim}) died of SIGKILL" in text, text
    assert "Traceback" not in text
    assert [j["status"] for j in sweep.jobs()] == ["done", "done"]  # the survivor finished the dead one's job
    assert sorted(sweep.counts().values()) == [1, 1]
