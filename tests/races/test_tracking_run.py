"""One MLflow run per job when a worker frozen inside `tracker.start` wakes after a takeover.

The zombie searched the store for the job's run, found none, and froze before `create_run`
(the tracker's `run-searched` hook); or it created its run and froze before recording it in the
queue (`run-opened`). Meanwhile another worker takes the job over and opens the job's run. Each
interleaving is forced with hooks and events, on both queue backends and a real MLflow store,
and every round checks: one active run for the job, the one the queue records, finished, with
every step logged once, and the zombie's second run (if it made one) deleted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from sweeper.errors import LeaseLost
from sweeper.running.tracking import MLflowTracker, RunInfo, open_job_run
from sweeper.store.queue import ClaimedJob, Queue
from tests import mlflow_template

from .kit import WAIT_S, Competitor, two_stage_grid, violations

STEPS = [1, 2, 3]
ROUNDS = 2


@pytest.fixture
def store(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    mlflow_template.install(mlflow_template.template(tmp_path_factory), tmp_path / "state")
    return f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"


def run_info(job: ClaimedJob) -> RunInfo:
    return RunInfo(job.sweep, job.stage, job.id, job.kind, job.label, job.attempt, job.params)


def open_run(queue: Queue, job: ClaimedJob, tracker: MLflowTracker) -> str | None:
    """What the worker does before the job's function runs (Worker._call)."""
    return open_job_run(tracker, queue, run_info(job), job.lease, job.tracking_run_id, None)


def finish(queue: Queue, job: ClaimedJob, tracker: MLflowTracker) -> None:
    for step in STEPS:
        tracker.log_metrics({"loss": 1.0 / step}, step)
    tracker.flush()
    tracker.end("FINISHED")  # as the worker does: close the run, then record the result
    queue.complete(job.lease, {"loss": 1.0 / STEPS[-1]})


def pause_at(point: str, reached: threading.Event, go: threading.Event) -> Callable[[str], None]:
    """A tracker hook that stops the first time `point` is reached until `go` is set."""

    def hook(name: str) -> None:
        if name == point and not reached.is_set():
            reached.set()
            assert go.wait(WAIT_S), "the parked worker was never let go"

    return hook


def then_at(point: str, fn: Callable[[], None]) -> Callable[[str], None]:
    fired = threading.Event()

    def hook(name: str) -> None:
        if name == point and not fired.is_set():
            fired.set()
            fn()

    return hook


class Round:
    """One job claimed by a zombie (its lease already expired) and taken over by an owner."""

    def __init__(self, workers, uri: str, name: str) -> None:
        self.uri = uri
        self.zq, self.oq = workers.queue(), workers.queue(reap_every_s=0.0)
        self.spec = two_stage_grid(name, upstream=1)
        self.zq.enqueue(self.spec)
        zombie = self.zq.claim("zombie", -1, sweep=self.spec.name)  # expired at once: no clock to wait for
        assert zombie is not None
        self.zombie = zombie
        self.zt, self.ot = MLflowTracker(uri), MLflowTracker(uri)
        self.owner: ClaimedJob | None = None

    def take_over(self) -> ClaimedJob:
        owner = self.oq.claim("owner", 60, sweep=self.spec.name)
        assert owner is not None and owner.id == self.zombie.id, "the owner did not take the job over"
        self.owner = owner
        return owner

    def owner_whole_attempt(self) -> None:
        owner = self.take_over()
        open_run(self.oq, owner, self.ot)
        finish(self.oq, owner, self.ot)

    def zombie_wakes(self) -> None:
        with pytest.raises(LeaseLost):
            open_run(self.zq, self.zombie, self.zt)

    def problems(self, zombie_created: bool) -> list[str]:
        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name(self.spec.name)
        tagged = f"tags.job_id = '{self.zombie.id}'"
        active = client.search_runs([exp.experiment_id], tagged, run_view_type=ViewType.ACTIVE_ONLY)
        every = client.search_runs([exp.experiment_id], tagged, run_view_type=ViewType.ALL)
        recorded = self.oq.tracking_run(self.zombie.id)
        found = [f"queue: {v}" for v in violations(self.oq.db, self.spec)]
        if [r.info.run_id for r in active] != [recorded]:
            found.append(f"active runs {[r.info.run_id for r in active]}, the queue records {recorded}")
            return found
        run = active[0]
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        if run.info.status != "FINISHED" or steps != STEPS:
            found.append(f"the job's run is {run.info.status} with steps {steps}")
        if len(every) != (2 if zombie_created else 1):
            found.append(f"{len(every)} runs in all (deleted ones included)")
        return found


def test_a_zombie_that_creates_its_run_after_the_takeover_deletes_it(workers, store):
    """Parked between the tag search and create_run while the owner runs the whole attempt: the
    zombie's run is created after the owner's, refused, and deleted by the zombie itself."""
    problems: list[str] = []
    for i in range(ROUNDS):
        r = Round(workers, store, f"late-create-{i}")
        r.zt.race_hook = then_at("run-searched", r.owner_whole_attempt)
        r.zombie_wakes()
        problems += [f"round {i}: {p}" for p in r.problems(zombie_created=True)]
    assert not problems, problems[:5]


def test_an_owner_that_records_its_run_after_the_zombie_gave_up_deletes_the_zombies_run(workers, store):
    """The owner creates its run and stops before recording it; the zombie creates its own, is
    refused and finds no run recorded yet (so it keeps its run: it could be the one adopted); the
    owner then records its run and deletes the stray."""
    problems: list[str] = []
    for i in range(ROUNDS):
        r = Round(workers, store, f"late-record-{i}")
        reached, go = threading.Event(), threading.Event()
        r.ot.race_hook = pause_at("run-opened", reached, go)
        owner = Competitor(r.owner_whole_attempt)

        def start_owner(owner=owner, reached=reached) -> None:
            owner.start()
            assert reached.wait(WAIT_S), "the owner never opened its run"

        r.zt.race_hook = then_at("run-searched", start_owner)
        try:
            r.zombie_wakes()
        finally:
            go.set()
        owner.join()
        assert owner.error is None, owner.error
        problems += [f"round {i}: {p}" for p in r.problems(zombie_created=True)]
    assert not problems, problems[:5]


@pytest.mark.parametrize("owner_records_first", [True, False], ids=["recorded", "not-yet-recorded"])
def test_an_owner_that_adopts_the_zombies_run_keeps_it(workers, store, owner_records_first):
    """The zombie created its run and froze before recording it; the owner finds it by its tag and
    adopts it. Whether or not the owner has recorded it when the zombie is refused, that run is
    the job's one run and nobody deletes it."""
    problems: list[str] = []
    for i in range(ROUNDS):
        r = Round(workers, store, f"adopt-{owner_records_first}-{i}")
        if owner_records_first:
            r.zt.race_hook = then_at("run-opened", r.owner_whole_attempt)
            r.zombie_wakes()
        else:
            reached, go = threading.Event(), threading.Event()
            r.ot.race_hook = pause_at("run-opened", reached, go)
            owner = Competitor(r.owner_whole_attempt)

            def start_owner(owner=owner, reached=reached) -> None:
                owner.start()
                assert reached.wait(WAIT_S), "the owner never opened its run"

            r.zt.race_hook = then_at("run-opened", start_owner)
            try:
                r.zombie_wakes()
            finally:
                go.set()
            owner.join()
            assert owner.error is None, owner.error
        problems += [f"round {i}: {p}" for p in r.problems(zombie_created=False)]
    assert not problems, problems[:5]
