"""Results in Python: `sweeper.results()` as a pandas DataFrame, `sweeper.show()` as a dict.

    import sweeper
    df = sweeper.results(state="/content/drive/MyDrive/sweeps/fmnist")   # one row per job
    df[df.status == "done"].sort_values("metrics.test_accuracy", ascending=False).head()
    sweeper.show(df.id[0])["params_effective"]                            # `sweeper show --json`

The DataFrame has the columns of `sweeper export --csv` (views/export.py): id, sweep, stage, kind,
status, label, attempt, failures, interruptions, started_at, finished_at (ISO, UTC), duration_s,
error, then `params.<key>` (the effective params: the kind's defaults filled in) and
`metrics.<key>`; secrets masked as everywhere else. It is read like `status` reads: a mirrored
state (Google Drive) is read from a local copy, and no lease is taken. pandas is imported only
here, on the first call: `import sweeper` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sweeper.config import resolve_settings
from sweeper.store.db import Database, OutagePolicy, open_database


@contextmanager
def _reading(state: str | os.PathLike[str] | None, db: str | None, mirror: str) -> Iterator[tuple[Database, Any]]:
    from sweeper.mirrored.mirror import open_state

    settings = resolve_settings(state=state, db=db, tracking=False)
    with open_state(settings, command="results", access="read", mirror=mirror) as session:
        database = open_database(session.settings.db_url, create=False, outage=OutagePolicy(limit_s=10.0))
        try:
            yield database, session.settings
        finally:
            database.dispose()


def results(
    state: str | os.PathLike[str] | None = None,
    db: str | None = None,
    sweep: str | None = None,
    *,
    stage: str | None = None,
    status: str | list[str] | None = None,
    mirror: str = "auto",
) -> Any:
    """Every job (of `sweep`, `stage`, in `status`) as a pandas DataFrame with the CSV's columns.

    `state` and `db` mean what --state and --db mean to the CLI (and default the same way, from
    SWEEPER_STATE / SWEEPER_DB, then ./state). Numbers stay numbers; a column a job lacks is NaN.
    """
    import pandas as pd

    from sweeper.store.results import load_jobs
    from sweeper.store.selection import require_sweep
    from sweeper.views.export import rows

    statuses = [status] if isinstance(status, str) else status
    with _reading(state, db, mirror) as (database, _):
        if sweep:
            require_sweep(database, sweep)
        records = load_jobs(database, sweep, stage, statuses or None)
    header, data = rows(records)
    frame = pd.DataFrame([{k: (None if v == "" else v) for k, v in row.items()} for row in data], columns=header)
    for column in ("started_at", "finished_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def show(
    job_id: str,
    state: str | os.PathLike[str] | None = None,
    db: str | None = None,
    *,
    mirror: str = "auto",
) -> dict[str, Any]:
    """One job as `sweeper show JOB --json` gives it (schema sweeper.job/1); a unique id prefix will do."""
    from sweeper.store.readmodel import resolve_job_id
    from sweeper.views.show import collect_job, to_json

    with _reading(state, db, mirror) as (database, settings):
        with database.read() as conn:
            full_id = resolve_job_id(conn, job_id)
        return to_json(collect_job(database, full_id, settings.state_dir))
