"""A read-only view of a sweep's outcome: its stages, its jobs with params and results, their artifacts.

`sweeper report`, `sweeper export` and report plug-ins read through this; none of them writes to
the queue. Artifacts are fetched through the ArtifactStore, so every file a report uses has
passed its sha256 check (a file on disk or a blob in the database alike). Nothing here imports
torch or mlflow.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sweeper import mappings
from sweeper.errors import CheckpointError, UsageError
from sweeper.grid.handoff import REF_KEYS
from sweeper.masking import Secrets, mask_params
from sweeper.store.db import Database, attempts, jobs, sweeps
from sweeper.store.readmodel import JobParams, read_stages, read_sweeps, stage_code_versions
from sweeper.store.selection import require_sweep

if TYPE_CHECKING:
    from sweeper.store.checkpoints import ArtifactStore

Scalar = str | int | float | bool | None


def is_outcome(value: Any) -> bool:
    """A resolved hand-off reference: what `best_of` / `result_of` turned into (see handoff.py)."""
    return isinstance(value, Mapping) and "job" in value and "stage" in value and "artifacts" in value


def is_reference(value: Any) -> bool:
    """A hand-off reference as written in the grid file ({best_of: STAGE, ...}), before resolution."""
    return isinstance(value, Mapping) and any(k in value for k in REF_KEYS)


def is_handoff(value: Any) -> bool:
    """A hand-off, resolved or not: one value in a table, never a group of columns."""
    return is_outcome(value) or is_reference(value)


def flatten(value: Mapping[str, Any], prefix: str = "", *, records: bool = False) -> dict[str, Scalar]:
    """Nested params or results -> {"conv1.channels": 8, ...}, one scalar per dotted key.

    A resolved hand-off collapses to the upstream job id (a list of them to ids joined by ','),
    a list of scalars becomes compact JSON, and a list of records (a table such as pruning
    triplets) is left out unless `records` is true, when it becomes JSON too.
    """
    out: dict[str, Scalar] = {}
    for path, v in mappings.flatten(value, prefix, whole=is_handoff).items():
        if is_outcome(v):
            out[path] = str(v["job"])
        elif is_reference(v):  # not resolved yet (a blocked job): keep it whole
            out[path] = json.dumps(v, separators=(",", ":"), sort_keys=True)
        elif isinstance(v, list):
            if v and all(is_outcome(x) for x in v):
                out[path] = ",".join(str(x["job"]) for x in v)
            elif all(not isinstance(x, (Mapping, list)) for x in v) or records:
                out[path] = json.dumps(v, separators=(",", ":"), default=str)
        else:
            out[path] = v
    return out


def number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, text, bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if f == f and f not in (float("inf"), float("-inf")) else None


@dataclass
class JobRecord:
    id: str
    sweep: str
    stage: str
    kind: str
    status: str
    label: str
    # What the job ran with as the grid gave it: resolved when it had hand-offs, else as written.
    # Secrets masked (sweeper/masking.py), as everything read here.
    params: dict[str, Any]
    params_written: dict[str, Any]
    provenance: dict[str, str]
    result: dict[str, Any]
    error: str | None
    attempt: int
    failures: int
    interruptions: int
    position: int
    started_at: float | None
    finished_at: float | None
    # Every param it ran with, the kind's defaults filled in; None until an attempt started.
    params_effective: dict[str, Any] | None = None

    @property
    def recorded(self) -> dict[str, Any]:
        """The fullest record of its params: effective once it started, else `params`."""
        return self.params_effective if self.params_effective is not None else self.params

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    def metric(self, name: str) -> float | None:
        return number(self.result.get(name))

    def flat_params(self) -> dict[str, Scalar]:
        return flatten(self.params)

    def flat_recorded(self) -> dict[str, Scalar]:
        """`recorded` flattened: the CSV's and the generic report's params."""
        return flatten(self.recorded)


@dataclass
class StageInfo:
    sweep: str
    name: str
    kind: str
    needs: list[str]
    description: str
    counts: dict[str, int] = field(default_factory=dict)
    # code hash -> done jobs, only when they ran under more than one version of the job code
    code_versions: dict[str, int] = field(default_factory=dict)


def _record(r: sa.Row) -> JobRecord:
    params = JobParams.of(r)
    secrets = Secrets.of(params.written, params.resolved)
    return JobRecord(
        id=r.id,
        sweep=r.sweep,
        stage=r.stage,
        kind=r.kind,
        status=r.status,
        label=secrets.scrub(r.label or "") or "",
        params=mask_params(params.ran_with),
        params_effective=mask_params(params.effective) if params.effective is not None else None,
        params_written=mask_params(params.written),
        provenance=params.provenance,
        result=r.result if isinstance(r.result, dict) else {},
        error=secrets.scrub(r.error),
        attempt=r.attempt,
        failures=r.failures,
        interruptions=r.interruptions,
        position=r.position,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


def load_jobs(
    db: Database, sweep: str | None = None, stage: str | None = None, statuses: Iterable[str] | None = None
) -> list[JobRecord]:
    """Jobs in queue order (sweep creation, then enqueue position)."""
    cond = []
    if sweep:
        cond.append(jobs.c.sweep == sweep)
    if stage:
        cond.append(jobs.c.stage == stage)
    if statuses:
        cond.append(jobs.c.status.in_(list(statuses)))
    cols = [c for c in jobs.c if c.name not in ("lease_token",)]
    with db.read() as conn:
        rows = conn.execute(
            sa.select(*cols)
            .select_from(jobs.join(sweeps, jobs.c.sweep == sweeps.c.name))
            .where(*cond)
            .order_by(sweeps.c.created_at, jobs.c.position)
        ).all()
    return [_record(r) for r in rows]


class SweepView:
    """Read-only access to one sweep for reports: stages, jobs, results and verified artifacts.

    This is the object a report plug-in receives (see sweeper/views/report.py). Its methods:

        view.sweep, view.description, view.stages        # names, kinds, needs, counts
        view.jobs(stage=None, status="done")             # JobRecords in queue order
        view.stage(name)                                 # StageInfo or None
        view.attempt_provenance()                        # {(job_id, attempt): where and on what it ran}
        view.artifact_names(job_id)                      # names recorded by the job
        view.artifact(job_id, name) -> Path              # a local, sha256-verified copy
        view.read_json(job_id, name) / read_csv(...)     # parsed artifacts
        view.figure_path("loss.png") -> Path             # where to save a figure of the report
        view.mlflow_screenshot                           # file name of the MLflow UI's runs table, or None
        view.mlflow_stage_screenshots                    # {stage: file name of its own runs table}
    """

    def __init__(self, db: Database, state_dir: Path, sweep: str, out_dir: Path | None = None) -> None:
        self.db = db
        self.state_dir = Path(state_dir)
        self.out_dir = out_dir
        # set by `sweeper report --mlflow-screenshot` (sweeper/views/mlflow_shot.py): a PNG in out_dir
        self.mlflow_screenshot: str | None = None
        # and one runs table per stage: {stage: PNG file name in out_dir}
        self.mlflow_stage_screenshots: dict[str, str] = {}
        with db.read() as conn:
            found = read_sweeps(conn, sweep) if sweep else []
            if not found:
                require_sweep(db, sweep)
            self.sweep: str = found[0].name
            self.description: str = found[0].description
            self.spec_file: str | None = found[0].spec_file
            mixed = stage_code_versions(conn, sweep)
            self.stages: list[StageInfo] = [
                StageInfo(
                    s.sweep,
                    s.name,
                    s.kind,
                    list(s.spec.needs),
                    s.spec.description,
                    s.counts,
                    mixed.get((s.sweep, s.name), {}),
                )
                for s in read_stages(conn, sweep)
            ]
        self._jobs = load_jobs(db, sweep)
        self._artifacts: dict[str, list[str]] | None = None
        self._stale: dict[str, str] | None = None
        self._store: ArtifactStore | None = None

    # -- jobs --------------------------------------------------------------------------------

    def stage(self, name: str) -> StageInfo | None:
        return next((s for s in self.stages if s.name == name), None)

    def jobs(self, stage: str | None = None, status: str | None = "done") -> list[JobRecord]:
        return [j for j in self._jobs if (stage is None or j.stage == stage) and (status is None or j.status == status)]

    def job(self, job_id: str) -> JobRecord | None:
        return next((j for j in self._jobs if j.id == job_id), None)

    def attempt_provenance(self) -> dict[tuple[str, int], dict[str, Any]]:
        """(job id, attempt) -> the provenance recorded as that attempt started (sweeper/running/provenance.py:
        versions, host, device, code hash, load), for the sweep's jobs."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(attempts.c.job_id, attempts.c.attempt, attempts.c.provenance)
                .select_from(attempts.join(jobs, attempts.c.job_id == jobs.c.id))
                .where(jobs.c.sweep == self.sweep)
            ).all()
        return {(r.job_id, r.attempt): r.provenance for r in rows if isinstance(r.provenance, dict)}

    def stale(self) -> dict[str, str]:
        """Job id -> why, for the sweep's jobs that ran on a hand-off whose upstream changed since."""
        if self._stale is None:
            from sweeper.store.stale import stale_jobs

            with self.db.read() as conn:
                self._stale = stale_jobs(conn, sweep=self.sweep)
        return self._stale

    # -- artifacts ---------------------------------------------------------------------------

    def _artifact_store(self) -> ArtifactStore:
        if self._store is None:
            from sweeper.store.checkpoints import ArtifactStore

            self._store = ArtifactStore(self.db, self.state_dir)  # no fence: it can only read
        return self._store

    def artifact_names(self, job_id: str) -> list[str]:
        if self._artifacts is None:
            from sweeper.store.checkpoints import list_artifacts

            found: dict[str, list[str]] = {}
            for rec in list_artifacts(self.db, [j.id for j in self._jobs]):
                found.setdefault(rec.job_id, []).append(rec.name)
            self._artifacts = found
        return list(self._artifacts.get(job_id, []))

    def artifact(self, job_id: str, name: str) -> Path:
        """A local copy of the artifact, verified against its sha256. Raises CheckpointError."""
        return self._artifact_store().fetch(job_id, name)

    def read_json(self, job_id: str, name: str) -> Any:
        path = self.artifact(job_id, name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"artifact '{name}' of job {job_id} is not JSON: {exc}") from None

    def read_csv(self, job_id: str, name: str) -> list[dict[str, str]]:
        path = self.artifact(job_id, name)
        return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))

    # -- report output -----------------------------------------------------------------------

    def figure_path(self, name: str) -> Path:
        """Where a report section saves a figure; refer to it in markdown by `name`."""
        if self.out_dir is None:
            raise UsageError("this view was not opened for a report (no output directory)")
        if "/" in name or "\\" in name or name.startswith("."):
            raise UsageError(f"figure name {name!r} must be a plain file name")
        return self.out_dir / name
