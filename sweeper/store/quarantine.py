"""Where refused checkpoints go: kept as evidence under `<state>/quarantine/`, never deleted.

A checkpoint refused as possibly malicious (checkpoints.decode) is moved (a file) or copied (a
database blob) to `quarantine/<sweep>/<job id>/<file name>`, and its checkpoint row stays, its
`location` pointing there: that is the flag. A flagged row is never a restore candidate and
never pruned, and its file is never unlinked by the store. A `quarantined` event names the file,
its sha256 and the reason.

Whether a job may start again without its refused checkpoints is decided by the events too: a
`quarantined` event newer than the job's last `from_scratch` event (`sweeper retry
--from-scratch JOB`) makes the job fail at once instead of quietly starting over at step 0.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from sweeper.store.db import Database, add_event, events
from sweeper.store.db import checkpoints as checkpoint_rows
from sweeper.store.statefiles import atomic_write
from sweeper.store.statepaths import under

AREA = "quarantine"
QUARANTINED = "quarantined"  # event: a file was refused and kept aside
FROM_SCRATCH = "from_scratch"  # event: the user restarted the job without its refused checkpoints


def is_quarantined(location: str | None) -> bool:
    return location is not None and location.split("/", 1)[0] == AREA


def keep(root: Path, sweep: str, job_id: str, name: str, *, path: Path | None, data: bytes) -> Path:
    """Put the refused bytes at quarantine/<sweep>/<job>/<name>: `path` moved there, else `data` written."""
    dest = under(root, AREA, sweep, job_id, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if path is not None and path.exists():
        os.replace(path, dest)  # same state directory, so one rename: never a moment without the file
    elif not dest.exists():
        atomic_write(dest, data)
    return dest


def record(db: Database, job_id: str, row_id: int | None, location: str, detail: str) -> None:
    """Flag the checkpoint row (its location now in quarantine) and record the event, in one transaction.

    Not fenced by the job's lease: keeping evidence is right whoever holds the job.
    """

    def txn() -> None:
        with db.write() as conn:
            if row_id is not None:
                conn.execute(checkpoint_rows.update().where(checkpoint_rows.c.id == row_id).values(location=location))
            add_event(conn, job_id, QUARANTINED, detail=detail)

    db.retrying(txn, "record a quarantined checkpoint")


def pending_refusal(db: Database, job_id: str) -> str | None:
    """The detail of the job's newest `quarantined` event, unless `retry --from-scratch` came after it."""

    def read(conn: sa.Connection) -> str | None:
        row = conn.execute(
            sa.select(events.c.type, events.c.detail)
            .where(events.c.job_id == job_id, events.c.type.in_([QUARANTINED, FROM_SCRATCH]))
            .order_by(events.c.id.desc())
            .limit(1)
        ).first()
        return row.detail or "" if row is not None and row.type == QUARANTINED else None

    return db.in_read("read quarantine events", read)
