"""The JobContext: everything a job kind sees of the orchestrator.

    def run(ctx: JobContext, params: dict) -> dict:      # returns final metrics
        state = ctx.restore()                             # newest valid checkpoint or None
        ...
        ctx.progress(0.3, "epoch 3/10")                   # shown by `sweeper status`
        ctx.log_metrics({"loss": loss}, step=global_step) # buffered; written after each checkpoint
        if ctx.should_stop():                             # SIGTERM, Ctrl-C or lease lost
            ctx.checkpoint(state)
            return ctx.interrupted()
        ctx.checkpoint(state)                             # atomic, verified on restore
        ctx.log_artifact(path)                            # recorded with its sha256
        ctx.add_provenance({"device": "cuda (A100)"})    # recorded with the attempt (show, MLflow tags)
        return {"test_accuracy": 0.91}

A job kind's entry point imports this module. Its helpers import only light modules of
sweeper that load nothing of the queue: `sweeper.outcome` (JobFailed, Interrupted, re-exported
here), `sweeper.plots` (`pyplot()`, matplotlib without a display), `sweeper.mappings` (nested
dicts) and `sweeper.config` (`jobs/ml/fetch.py` reads the default state directory there).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.errors import LeaseLost
from sweeper.outcome import Interrupted, JobFailed
from sweeper.running.tracking import NullTracker, Tracker
from sweeper.store.checkpoints import ArtifactStore, CheckpointStore
from sweeper.store.encoding import load_plain
from sweeper.store.queue import ClaimedJob, Queue
from sweeper.store.statepaths import under

__all__ = ["Interrupted", "JobContext", "JobFailed", "LeaseLost", "load_plain"]

# The key under which a checkpoint carries the metric points not yet written to the tracker.
PENDING_METRICS = "__sweeper_pending_metrics__"


@dataclass
class Progress:
    fraction: float | None = None
    message: str | None = None
    changed: bool = False


@dataclass
class JobContext:
    job: ClaimedJob
    queue: Queue
    checkpoints: CheckpointStore
    artifacts: ArtifactStore
    tracker: Tracker = field(default_factory=NullTracker)
    threads: int = 1
    state_dir: Path = Path("state")
    options: dict[str, Any] = field(default_factory=dict)  # worker options jobs may read: data_dir
    on_progress: Callable[[float | None, str | None], None] | None = None
    log: Callable[[str], None] = print
    scan_checkpoints: bool = False  # also look for checkpoints the database does not know (mirrored mode)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lease_lost: threading.Event = field(default_factory=threading.Event)
    _stop_reason: str = "stop requested (signal)"
    _progress: Progress = field(default_factory=Progress)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _checkpoints_written: int = 0

    # -- identity ----------------------------------------------------------------------------

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def sweep(self) -> str:
        return self.job.sweep

    @property
    def stage(self) -> str:
        return self.job.stage

    @property
    def attempt(self) -> int:
        return self.job.attempt

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def work_dir(self) -> Path:
        """A scratch directory for this job's files (kept across attempts on this machine)."""
        path = under(self.state_dir, "work", self.sweep, self.job_id)  # names from the queue: checked
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- checkpoints -------------------------------------------------------------------------

    def restore(self) -> dict[str, Any] | None:
        """The newest valid checkpoint of this job (verified by sha256), or None on a first run."""
        found = self.checkpoints.restore(self.sweep, self.job_id, scan=self.scan_checkpoints)
        if found is None:
            return None
        self.log(f"job {self.job_id}: resuming from checkpoint {found.sha256[:12]} ({found.source})")
        state = dict(found.state)
        points = state.pop(PENDING_METRICS, None)
        if points:
            self.tracker.replay(points)
        return state

    def restore_upstream(self, job_id: str) -> dict[str, Any] | None:
        """The newest valid checkpoint of another job of this sweep, read-only, or None.

        A promoted job (a `promote:` stage) continues its upstream job's training from there. The
        upstream job's files are only read: its checkpoints stay as they are, for the report and
        for every other rung that continues it. The metric points that checkpoint carried belong
        to the upstream job's run and were written by it, so they are dropped here.
        """
        found = self.checkpoints.restore(self.sweep, job_id, scan=self.scan_checkpoints)
        if found is None:
            return None
        self.log(f"job {self.job_id}: continues from job {job_id}'s checkpoint {found.sha256[:12]} ({found.source})")
        state = dict(found.state)
        state.pop(PENDING_METRICS, None)
        return state

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write the checkpoint, then the metrics logged since the last one. Raises LeaseLost for a zombie.

        The checkpoint goes first because its write is fenced: a worker that was frozen past its
        lease stops there, before it can write metric points over those of the worker that took
        the job over. The points travel inside the checkpoint too, so a crash between the two
        writes loses none: the next attempt writes them (with their original timestamps, so a
        point written twice is stored once).
        """
        if self._lease_lost.is_set():
            raise LeaseLost(f"job {self.job_id}: lease lost; not writing a checkpoint")
        payload = dict(state)
        points = self.tracker.pending()
        if points:
            payload[PENDING_METRICS] = points
        self.checkpoints.save(self.job.lease, self.sweep, payload)
        self._checkpoints_written += 1
        self.tracker.flush()

    # -- control -----------------------------------------------------------------------------

    def should_stop(self) -> bool:
        """True once the worker was asked to stop or lost the lease. Cheap: call it every batch."""
        return self._stop.is_set() or self._lease_lost.is_set()

    def stop_reason(self) -> str:
        return "lease lost" if self._lease_lost.is_set() else self._stop_reason

    def interrupted(self) -> Interrupted:
        return Interrupted(self.stop_reason())

    def request_stop(self, reason: str | None = None) -> None:
        if reason is not None and not self._stop.is_set():
            self._stop_reason = reason
        self._stop.set()

    def mark_lease_lost(self) -> None:
        self._lease_lost.set()

    def verify_lease(self) -> None:
        """A database round-trip: raise LeaseLost unless this worker still owns the job.

        Call it right before a side effect outside the database (one that fencing cannot undo).
        """
        if self._lease_lost.is_set():
            raise LeaseLost(f"job {self.job_id}: lease lost")
        self.queue.verify_lease(self.job.lease)

    # -- progress and tracking ---------------------------------------------------------------

    def progress(self, fraction: float | None, message: str | None = None) -> None:
        """Record progress in memory; the heartbeat publishes it to the database."""
        with self._lock:
            self._progress = Progress(fraction, message, True)
        if self.on_progress is not None:
            self.on_progress(fraction, message)

    def take_progress(self) -> Progress | None:
        with self._lock:
            if not self._progress.changed:
                return None
            self._progress.changed = False
            return Progress(self._progress.fraction, self._progress.message)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.tracker.log_metrics(metrics, step)

    def add_provenance(self, fields: Mapping[str, Any]) -> None:
        """Record more about where this attempt runs (its device, numerics settings such as TF32).

        Merged into the attempt's provenance (`sweeper show`, `attempts[].provenance` in --json)
        and set as `provenance.<key>` tags on the MLflow run. Values should be JSON scalars.
        Raises LeaseLost for a zombie.
        """
        if self._lease_lost.is_set():
            raise LeaseLost(f"job {self.job_id}: lease lost; not recording provenance")
        plain = {str(k): v for k, v in fields.items()}
        self.queue.add_provenance(self.job.lease, plain)
        from sweeper.running.tracking import provenance_tags

        self.tracker.set_tags(provenance_tags(plain))

    def log_row(self, name: str, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """One row of a table of this job's (a step, say), shown nested under its run; once per name.

        Written to the tracker at once (not buffered behind a checkpoint), so the lease is checked
        first: a zombie whose job was taken over raises LeaseLost and writes no row.
        """
        self.verify_lease()
        self.tracker.log_row(name, params, metrics)

    def log_artifact(self, path: str | Path, name: str | None = None, *, track: bool = True) -> dict[str, Any]:
        """Store a file as this job's output (sha256 in the database) and attach it to the run."""
        path = Path(path)
        info = self.artifacts.put(self.job.lease, self.sweep, path, name or path.name)
        if track:
            self.tracker.log_artifact(path)
        return info

    # -- upstream ----------------------------------------------------------------------------

    def fetch_artifact(self, ref: Mapping[str, Any], name: str) -> Path:
        """A local, sha256-verified copy of artifact `name` of a resolved hand-off `ref`."""
        info = (ref.get("artifacts") or {}).get(name)
        return self.artifacts.fetch(ref["job"], name, info)

    def upstream(self, stage: str | None = None) -> list[dict[str, Any]]:
        """The resolved hand-off values in this job's params (optionally of one stage)."""
        found: list[dict[str, Any]] = []

        def walk(value: Any) -> None:
            if isinstance(value, Mapping) and "job" in value and "stage" in value and "artifacts" in value:
                if stage is None or value["stage"] == stage:
                    found.append(dict(value))
            elif isinstance(value, Mapping):
                for v in value.values():
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)

        walk(self.params)
        return found
