"""Experiment tracking: one run per job, continued across attempts, with no duplicate points.

Metrics are buffered in memory and written in batches when the job checkpoints (and when it ends),
never on the per-batch path. A resumed attempt first reads the highest step already logged for
each metric and drops points at or below it: the job replays the steps between its last
checkpoint and the interruption, and those points (bit-identical, since training is
deterministic) were possibly logged already.

The MLflow implementation imports mlflow lazily, so `sweeper status` never pays for it.

Where the runs live (config.default_tracking_uri): next to a SQLite queue, <state>/mlflow.db;
with a PostgreSQL queue, the database <queuedb>_mlflow on the same server, which every machine
of the sweep reaches, so a job killed on one machine and finished on another is one run. Files:
a local store keeps MLflow's copies under <state>/mlartifacts; a database store on a server has
no place every machine reaches unless SWEEPER_MLFLOW_ARTIFACTS names one (a shared path, s3://,
gs://, mlflow-artifacts:/ of an `mlflow server --serve-artifacts`), so by default MLflow gets no
copies there and the run's `sweeper.files` tag says where they are: in the sweep's own artifact
store (the queue database on PostgreSQL), where `sweeper show` and `sweeper report` find them on
any machine. A tracking server (http://...) stores files where it is configured to.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sweeper.errors import LeaseLost
from sweeper.grid.handoff import CONTINUE_KEY
from sweeper.mappings import flatten
from sweeper.masking import mask_params, mask_text


@dataclass(frozen=True)
class RunInfo:
    """What the tracker needs to know about the job it records."""

    sweep: str
    stage: str
    job_id: str
    kind: str
    label: str
    attempt: int
    params: Mapping[str, Any]  # the effective params; masked (sweeper/masking.py) before they are logged
    provenance: Mapping[str, Any] = field(default_factory=dict)  # the attempt's, logged as provenance.* tags


class Tracker(Protocol):
    def start(self, run: RunInfo, run_id: str | None) -> str | None:
        """Open (or reopen) the job's run and return its id."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metric points; nothing is written until flush()."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the run (masked; values as text)."""

    def log_row(self, name: str, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """One row of a table under the job's run (an MLflow child run), written once per name."""

    def flush(self) -> None: ...

    def pending(self) -> list[list[Any]]:
        """The buffered points as plain lists [key, value, timestamp_ms, step] (a checkpoint carries them)."""

    def replay(self, points: list[list[Any]]) -> None:
        """Buffer points carried by a restored checkpoint again, unless the run already has their steps."""

    def end(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (interrupted; the next attempt reopens the run)."""

    def withdraw(self, job_run: str | None) -> None:
        """This attempt lost its job before recording its run; `job_run`: the run the queue records now."""

    def drop_strays(self) -> None:
        """The run is recorded as the job's: delete any other active run tagged with the job."""


class NullTracker:
    """Tracking switched off: everything is accepted and dropped."""

    def start(self, run: RunInfo, run_id: str | None) -> str | None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_row(self, name: str, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        pass

    def flush(self) -> None:
        pass

    def pending(self) -> list[list[Any]]:
        return []

    def replay(self, points: list[list[Any]]) -> None:
        pass

    def end(self, status: str) -> None:
        pass

    def withdraw(self, job_run: str | None) -> None:
        pass

    def drop_strays(self) -> None:
        pass


class RunRecord(Protocol):
    """The queue's side of a job's run (sweeper.store.queue.Queue)."""

    def set_tracking_run(self, lease: Any, run_id: str, uri: str | None = None) -> None: ...

    def tracking_run(self, job_id: str) -> str | None: ...


def open_job_run(
    tracker: Tracker, record: RunRecord, run: RunInfo, lease: Any, recorded: str | None, uri: str | None
) -> str | None:
    """Open the job's run and record it in the queue under `lease`: exactly one run per job.

    A worker frozen between its tag search and create_run (tracker.start) may wake after another
    worker took the job over and opened the job's run; it then creates a second one. Its
    `set_tracking_run` is refused (fenced by the lease), and it withdraws that run. The two sides
    clean up in opposite orders, so that one of them always sees the other's stray: the loser
    creates its run, then reads the queue; the owner records its run, then searches the store.
      * the loser deletes its run when the queue records another one (never the one the queue
        records: an owner may have adopted it as an orphan);
      * the owner, once its run is recorded, deletes every other active run tagged with the job.
    A stray never holds metric points: a run is recorded before the job logs anything.
    """
    run_id = tracker.start(run, recorded)
    hook = getattr(tracker, "race_hook", None)
    if hook is not None:
        hook("run-opened")
    if run_id and run_id != recorded:
        try:
            record.set_tracking_run(lease, run_id, uri)
        except LeaseLost:
            # Best effort: when the store or the queue went away too, the job is lost all the same.
            with contextlib.suppress(Exception):
                tracker.withdraw(record.tracking_run(run.job_id))
            raise
    if run_id:
        tracker.drop_strays()
    return run_id


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'conv1': {'channels': 8}} -> {'conv1.channels': '8'}; long values are cut to MLflow's limit.

    The walk is mappings.flatten's; MLflow params are text, so each value becomes a string here,
    and a resolved hand-off becomes `stage:job`, the run it came from.
    """
    out: dict[str, str] = {}
    for name, value in flatten(params, prefix, whole=_is_handoff).items():
        if isinstance(value, Mapping):
            out[name] = f"{value['stage']}:{value['job']}"  # a resolved hand-off: name its source
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) and "job" in v for v in value):
            out[name] = ",".join(f"{v['stage']}:{v['job']}" for v in value)
        else:
            out[name] = str(value)[:6000]
    return out


def provenance_tags(provenance: Mapping[str, Any]) -> dict[str, str]:
    """An attempt's provenance as MLflow tags: provenance.code, provenance.host, ... (masked text)."""
    return {f"provenance.{k}": mask_text(str(v))[:5000] for k, v in provenance.items() if v is not None}


def _is_handoff(value: Mapping[str, Any]) -> bool:
    return "job" in value and "stage" in value


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def run_name(run: RunInfo) -> str:
    """What tells the stage's runs apart first (its grid values, compact), then the stage.

    The runs table cuts names at about 20 characters: `model_search conv1.channels=8 ...` showed
    the same text for every run of a stage. So the values lead, with short keys
    (`c1.ch=8 c2.ch=16 de=64 · model_search`); the stage is a tag and a column of the saved view too.
    """
    compact = compact_label(mask_text(run.label))
    return (f"{compact} · {run.stage}" if compact else run.stage)[:250]


_LABEL_KEY = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_.\-]*)=")


def compact_label(label: str) -> str:
    """'conv1.channels=8 dense=64' -> 'c1.ch=8 de=64'; full keys where two short ones would collide."""
    marks = list(_LABEL_KEY.finditer(label))
    if not marks:
        return label.strip()
    pairs = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(label)
        pairs.append((m.group(1), label[m.end() : end].strip()))
    short = [".".join(_short(part) for part in key.split(".")) for key, _ in pairs]
    if len(set(short)) < len(short):
        short = [key for key, _ in pairs]
    return " ".join(f"{k}={v}" for k, (_, v) in zip(short, pairs, strict=True))


def _short(part: str) -> str:
    """A key part, short: conv1 -> c1, channels -> ch, batch_size -> bs, lr -> lr."""
    if len(part) <= 3:
        return part
    words = [w for w in part.split("_") if w]
    if len(words) > 1:
        return "".join(w[0] for w in words)
    letters, digits = re.match(r"([^\d]*)(\d*)", part).groups()  # type: ignore[union-attr]
    return letters[0] + digits if digits else part[:2]


# Errors worth waiting out: SQLite's lock contention under concurrent workers, and a database
# server that restarts or drops connections (on PostgreSQL the MLflow store shares the queue's
# server, so it goes away in the same outages, which the queue rides out for up to 120 s).
_TRANSIENT = (
    "locked",
    "busy",
    "connection",
    "could not connect",
    "server closed",
    "terminating",
    "shutting down",
    "starting up",
    "timed out",
    "timeout",
)


def _retry_transient(fn: Callable[[], Any], what: str, limit_s: float = 120.0) -> Any:
    delay, deadline = 0.05, time.monotonic() + limit_s
    while True:
        try:
            return fn()
        except Exception as exc:
            text = str(exc).lower()
            if not any(word in text for word in _TRANSIENT) or time.monotonic() > deadline:
                raise RuntimeError(f"MLflow: could not {what}: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class _NoStoreErrorTraceback(logging.Filter):
    """Drops MLflow's own report of a database error in its store.

    mlflow.store.db.utils logs each OperationalError at ERROR with a full traceback, then raises it.
    _retry_transient waits out the transient ones (a PostgreSQL restart) and reports any other in
    one line, so the traceback only made a worker that rode out an outage look like it crashed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


_MLFLOW_DB_LOGGER = logging.getLogger("mlflow.store.db.utils")
_MLFLOW_DB_LOGGER.addFilter(_NoStoreErrorTraceback())


ARTIFACTS_ENV = "SWEEPER_MLFLOW_ARTIFACTS"
# Where a run's files are when MLflow has no copies of them (a database store without a shared
# artifact location): shown in the run's tags in the UI.
FILES_IN_QUEUE = "in the sweep's queue (artifacts table); list them with `sweeper show JOB`, plots: `sweeper report`"

# MLflow 3's UI opens an experiment without a kind on its GenAI overview; this kind opens it on
# the runs table, the place for training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# A saved view of the runs table (the UI's "share" feature reads it from this experiment tag):
# open #/experiments/<id>/runs?viewStateShareKey=sweeper to see the stage as a column, the
# headline metrics next to it, newest first.
VIEW_KEY = "sweeper"
VIEW_STATE = {
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
    "selectedColumns": [
        "tags.`stage`",
        "tags.`attempt`",
        "metrics.`test_accuracy`",
        "metrics.`time_to_target_s`",
        "metrics.`train_accuracy`",
        "metrics.`loss`",
    ],
}


def experiment_tags() -> dict[str, str]:
    return {**EXPERIMENT_KIND, f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(VIEW_STATE)}


def is_database_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres", "mysql", "mssql")


_prepared: set[str] = set()
_prepared_lock = threading.Lock()


def prepare_postgres_store(tracking_uri: str, create_from: str | None) -> None:
    """Make the PostgreSQL database of the MLflow store exist and hold MLflow's tables, once per process.

    `create_from`: a database on the same server that exists (the queue's), to connect to for
    CREATE DATABASE. MLflow creates its tables (an alembic migration) when a client first opens
    an empty database; workers on several machines doing that at once collide, so it runs under
    a PostgreSQL advisory lock: the one lock every machine sees.
    """
    with _prepared_lock:
        if tracking_uri in _prepared:
            return
        import sqlalchemy as sa

        from sweeper.config import mask_password

        url = sa.make_url(tracking_uri)
        if create_from is not None:
            _create_database(sa.make_url(create_from), url.database or "")
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 10})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(727312)"))
                try:
                    from mlflow.tracking import MlflowClient

                    MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(727312)"))
                    conn.commit()
        except sa.exc.DBAPIError as exc:
            raise RuntimeError(f"MLflow store {mask_password(tracking_uri)}: {str(exc.orig).strip()}") from None
        finally:
            engine.dispose()
        _prepared.add(tracking_uri)


def _create_database(server: Any, name: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(
        server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 10}
    )
    try:
        with engine.connect() as conn:
            if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                return
            try:
                conn.execute(sa.text('CREATE DATABASE "{}"'.format(name.replace('"', '""'))))
            except sa.exc.DBAPIError as exc:
                code = getattr(exc.orig, "sqlstate", None)
                if code in ("42P04", "23505"):  # created by another worker a moment ago
                    return
                if code == "42501":
                    raise RuntimeError(
                        f"the MLflow database '{name}' does not exist and this user may not create it: "
                        f'create it once (CREATE DATABASE "{name}") or pass --mlflow-uri'
                    ) from None
                raise
    finally:
        engine.dispose()


class MLflowTracker:
    """One MLflow experiment per sweep, one run per job; tags: sweep, stage, job_id, attempt."""

    BATCH = 1000  # MLflow's limit of metrics per log_batch call

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: Path | None = None,
        init_lock: Path | None = None,
        *,
        artifact_location: str | None = None,
        log_files: bool = True,
        create_from: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.init_lock = init_lock
        # An explicit artifact location for new experiments (wins over artifact_root), and whether
        # files are copied to MLflow at all (see the module docstring).
        self.artifact_location = artifact_location
        self.log_files = log_files
        self.create_from = create_from
        self._client: Any = None
        self._run_id: str | None = None
        self._floor: dict[str, int] = {}
        self._buffer: list[tuple[str, float, int, int]] = []
        self._created = False  # whether this attempt created the run (open_job_run may withdraw it)
        self._job_id: str | None = None
        self._exp_id: str | None = None
        # Called at named points of start() and open_job_run(); tests park a worker there.
        self.race_hook: Callable[[str], None] = lambda name: None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.tracking_uri.startswith(("postgresql", "postgres:")):
                prepare_postgres_store(self.tracking_uri, self.create_from)
            if self.init_lock is None:
                client = MlflowClient(tracking_uri=self.tracking_uri)
            else:
                # Constructing the client creates a SQLite store's tables (an alembic migration);
                # two workers doing that at once corrupt it. Serialize it across processes.
                from filelock import FileLock

                self.init_lock.parent.mkdir(parents=True, exist_ok=True)
                with FileLock(str(self.init_lock)):
                    client = MlflowClient(tracking_uri=self.tracking_uri)
                    _retry_transient(lambda: client.search_experiments(max_results=1), "open the tracking store")
            self._client = client
        return self._client

    def _experiment_id(self, name: str) -> str:
        exp = _retry_transient(lambda: self.client.get_experiment_by_name(name), "look up the experiment")
        if exp is not None:
            if EXPERIMENT_KIND.keys() - exp.tags.keys():  # an experiment made by an older sweeper
                for key, value in experiment_tags().items():
                    _retry_transient(
                        functools.partial(self.client.set_experiment_tag, exp.experiment_id, key, value), "tag"
                    )
            return exp.experiment_id
        location = self.artifact_location or (self.artifact_root.resolve().as_uri() if self.artifact_root else None)
        try:
            return _retry_transient(
                lambda: self.client.create_experiment(name, artifact_location=location, tags=experiment_tags()),
                "create the experiment",
            )
        except Exception:
            exp = self.client.get_experiment_by_name(name)  # another worker created it first
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, run: RunInfo, run_id: str | None) -> str | None:
        tags = {
            "sweep": run.sweep,
            "stage": run.stage,
            "job_id": run.job_id,
            "kind": run.kind,
            "attempt": str(run.attempt),
        }
        if not self.log_files:
            tags["sweeper.files"] = FILES_IN_QUEUE
        tags.update(provenance_tags(run.provenance))
        existing = None
        if run_id is not None:
            try:
                existing = _retry_transient(lambda: self.client.get_run(run_id), "reopen the run")
            except Exception:
                existing = None
        exp_id = self._experiment_id(run.sweep)
        self._job_id, self._exp_id, self._created = run.job_id, exp_id, False
        if existing is None:
            # An attempt killed between creating its run and recording the run id in the queue
            # left a run behind: continue that one instead of opening a second run for the job.
            existing = self._run_of_job(exp_id, run.job_id)
        if existing is not None:
            run_id = existing.info.run_id
            self._run_id = run_id
            self._floor = self._max_steps(run_id, existing.data.metrics.keys())
            if existing.info.status == "FINISHED":
                # The job finished in a later attempt: this one is a zombie (a worker frozen past
                # its lease) that the queue will refuse at its next write. Leave the run alone.
                return run_id
            _retry_transient(lambda: self.client.update_run(run_id, status="RUNNING"), "reopen the run")
            if _int(existing.data.tags.get("attempt")) < run.attempt:
                _retry_transient(lambda: self.client.set_tag(run_id, "attempt", str(run.attempt)), "tag the run")
            self.set_tags(provenance_tags(run.provenance))  # this attempt's: the newest attempt wins
            if not existing.data.params:  # the attempt that created the run died before logging them
                self._log_params(run)
            return run_id
        self.race_hook("run-searched")  # no run of the job found: a frozen worker wakes here
        upstream = run.params.get(CONTINUE_KEY)
        if isinstance(upstream, str):
            # A promoted job (promote: stage) is a run of its own, nested under the run of the job
            # it continues: its curve carries on at the upstream's step numbers (docs/halving.md).
            tags["sweeper.continues"] = upstream
            parent = self._run_of_job(exp_id, upstream)
            if parent is not None:
                tags["mlflow.parentRunId"] = parent.info.run_id
        created = _retry_transient(
            lambda: self.client.create_run(exp_id, run_name=run_name(run), tags=tags), "create the run"
        )
        self._run_id = created.info.run_id
        self._created = True
        self._floor = {}
        self._log_params(run)
        return self._run_id

    def withdraw(self, job_run: str | None) -> None:
        """Delete the run this attempt created, unless the queue records it (or none yet).

        Recorded: a worker that took the job over adopted it as an orphan and logs into it. None:
        the next attempt adopts it, or the owner that records another run deletes it
        (drop_strays). Deleted runs leave the UI and every search; `mlflow gc` purges them.
        """
        run_id, self._run_id, self._buffer = self._run_id, None, []  # nothing more from this attempt
        if not self._created or run_id is None or job_run is None or job_run == run_id:
            return
        _retry_transient(lambda: self.client.delete_run(run_id), "delete a second run of the job")

    def drop_strays(self) -> None:
        if self._run_id is None or self._exp_id is None:
            return
        from mlflow.entities import ViewType

        found = _retry_transient(
            lambda: self.client.search_runs(
                [self._exp_id], filter_string=f"tags.job_id = '{self._job_id}'", run_view_type=ViewType.ACTIVE_ONLY
            ),
            "look for other runs of the job",
        )
        for other in found:
            if other.info.run_id != self._run_id:
                _retry_transient(
                    functools.partial(self.client.delete_run, other.info.run_id), "delete a second run of the job"
                )

    def _log_params(self, run: RunInfo) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in sorted(flatten_params(mask_params(dict(run.params))).items())]
        for i in range(0, len(items), 100):
            _retry_transient(
                functools.partial(self.client.log_batch, self._run_id, params=items[i : i + 100]), "log params"
            )

    def _run_of_job(self, exp_id: str, job_id: str) -> Any:
        found = _retry_transient(
            lambda: self.client.search_runs(
                [exp_id],
                filter_string=f"tags.job_id = '{job_id}'",
                max_results=1,
                order_by=["attributes.start_time ASC"],
            ),
            "look for the job's run",
        )
        return found[0] if found else None

    def _max_steps(self, run_id: str, keys: Any) -> dict[str, int]:
        floor = {}
        for key in keys:
            history = _retry_transient(
                functools.partial(self.client.get_metric_history, run_id, key), "read metric history"
            )
            if history:
                floor[key] = max(m.step for m in history)
        return floor

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            if step <= self._floor.get(key, -1):
                continue  # logged by an earlier attempt
            self._buffer.append((key, float(value), ts, int(step)))

    def pending(self) -> list[list[Any]]:
        return [[key, value, ts, step] for key, value, ts, step in self._buffer]

    def replay(self, points: list[list[Any]]) -> None:
        for key, value, ts, step in points:
            if int(step) > self._floor.get(str(key), -1):
                self._buffer.append((str(key), float(value), int(ts), int(step)))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self._run_id is None or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(str(k), mask_text(str(v))[:5000]) for k, v in tags.items()]
        _retry_transient(lambda: self.client.log_batch(self._run_id, tags=items), "tag the run")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._run_id is None or not self.log_files:
            return
        _retry_transient(lambda: self.client.log_artifact(self._run_id, str(path), artifact_path), "log an artifact")

    def log_row(self, name: str, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """A child run of the job's run, named `name`: MLflow's runs table shows it as a row nested
        under the job, with its params and metrics as columns (a table of a job's steps, say).

        Written at once, not buffered: a row is finished when it is logged. It is written once per
        name: an attempt that replays a step after a kill finds the row its predecessor wrote (a
        replayed step is bit-identical) and leaves it alone. The child carries `parent_job_id`, not
        `job_id`, so that looking a job's run up by its tag never finds a child.
        """
        if self._run_id is None:
            return
        parent = self._run_id
        found = _retry_transient(
            lambda: self.client.search_runs(
                [self.client.get_run(parent).info.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.row = '{name}'",
                max_results=1,
            ),
            "look for a row",
        )
        if found:
            return
        from mlflow.entities import Metric, Param

        parent_run = self.client.get_run(parent)
        tags = {k: v for k, v in parent_run.data.tags.items() if k in ("sweep", "stage", "kind")}
        tags.update(
            {"mlflow.parentRunId": parent, "row": name, "parent_job_id": parent_run.data.tags.get("job_id", "")}
        )
        child = _retry_transient(
            lambda: self.client.create_run(
                parent_run.info.experiment_id, run_name=f"{parent_run.info.run_name} {name}"[:250], tags=tags
            ),
            "create a row",
        )
        ts = int(time.time() * 1000)
        _retry_transient(
            lambda: self.client.log_batch(
                child.info.run_id,
                metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                params=[Param(k, v) for k, v in sorted(flatten_params(params).items())],
            ),
            "log a row",
        )
        _retry_transient(lambda: self.client.set_terminated(child.info.run_id, status="FINISHED"), "close a row")

    def flush(self) -> None:
        if self._run_id is None or not self._buffer:
            return
        from mlflow.entities import Metric

        points, self._buffer = self._buffer, []
        for i in range(0, len(points), self.BATCH):
            chunk = points[i : i + self.BATCH]
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in chunk]
            try:
                _retry_transient(functools.partial(self.client.log_batch, self._run_id, metrics=metrics), "log metrics")
            except BaseException:
                self._buffer = points[i:] + self._buffer  # not written: a later flush tries them again
                raise
            for key, _, _, step in chunk:
                self._floor[key] = max(self._floor.get(key, -1), step)

    def end(self, status: str) -> None:
        if self._run_id is None:
            return
        self.flush()
        _retry_transient(lambda: self.client.set_terminated(self._run_id, status=status), "close the run")


def make_tracker(tracking_uri: str | None, state_dir: Path, queue_url: str | None = None) -> Tracker:
    """`queue_url`: the queue's database; the default MLflow database on its server is created from it."""
    if not tracking_uri:
        return NullTracker()
    local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    shared = os.environ.get(ARTIFACTS_ENV) or None
    create_from = None
    if queue_url is not None and tracking_uri.startswith("postgres"):
        from sweeper.config import is_postgres, postgres_tracking_uri

        if is_postgres(queue_url) and postgres_tracking_uri(queue_url) == tracking_uri:
            create_from = queue_url
    return MLflowTracker(
        tracking_uri,
        artifact_root=state_dir / "mlartifacts" if local else None,
        init_lock=state_dir / ".mlflow-init.lock" if local else None,
        artifact_location=shared,
        # A database store on a server has no artifact place every machine reaches by default.
        log_files=not is_database_uri(tracking_uri) or shared is not None,
        create_from=create_from,
    )
