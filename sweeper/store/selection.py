"""Does a selection name what is in the queue: `--sweep`, `--stage` and job-state checks with a
"did you mean" hint, and why retry or cancel left jobs alone.

A typo would otherwise select nothing (`work --stage model_serch` exits with "queue is empty" while
jobs wait); these checks turn it into a UsageError that names what is there.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from sweeper.errors import UsageError
from sweeper.store.db import STATUSES, Database, jobs, stages
from sweeper.store.readmodel import read_sweeps


def _did_you_mean(name: str, names: list[str], what: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    listing = f"{what}: {', '.join(names)}"
    return (f"did you mean '{close[0]}'? " if close else "") + listing


def require_sweep(db: Database, name: str) -> None:
    """Raise a UsageError naming the sweeps there are, unless sweep `name` exists."""
    with db.read() as conn:
        names = [s.name for s in read_sweeps(conn)]
    if name not in names:
        raise UsageError(
            f"no sweep named '{name}' in {db.display_url}",
            hint=_did_you_mean(name, names, "sweeps there") if names else "run `sweeper enqueue GRID.yaml` first",
        )


def require_stage(db: Database, name: str, sweep: str | None = None) -> None:
    """Raise a UsageError naming the stages there are, unless stage `name` exists (in `sweep`)."""
    cond = [stages.c.sweep == sweep] if sweep else []
    with db.read() as conn:
        names = sorted(set(conn.execute(sa.select(stages.c.name).where(*cond)).scalars()))
    if name in names:
        return
    where = f"sweep '{sweep}'" if sweep else "the queue"
    raise UsageError(
        f"no stage named '{name}' in {where}",
        hint=_did_you_mean(name, names, "stages") if names else "it has no stages yet",
    )


def require_selection(db: Database, sweep: str | None = None, stages: str | Iterable[str] | None = None) -> None:
    """`--sweep` and `--stage` must name what is in the queue (UsageError, exit 2, with "did you mean").

    A typo would otherwise select nothing: `work --stage model_serch` would exit with "queue is
    empty" while jobs wait, `export` would write an empty file.
    """
    if sweep:
        require_sweep(db, sweep)
    for stage in [stages] if isinstance(stages, str) else stages or ():
        require_stage(db, stage, sweep)


def why_untouched(
    db: Database, ids: list[str], picked: list[str], wanted: Iterable[str], stage: str | None, sweep: str | None
) -> list[str]:
    """Why retry or cancel left jobs alone: the state of each id not picked, or of the selection."""
    wanted = tuple(wanted)
    with db.read() as conn:
        if ids:
            query = sa.select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(ids))
            status = {job_id: s for job_id, s in conn.execute(query)}
            return [f"job {i} is {status[i]}" for i in ids if i not in picked and i in status]
        if picked:
            return []
        cond: list[sa.ColumnElement[bool]] = []
        if stage:
            cond.append(jobs.c.stage == stage)
        if sweep:
            cond.append(jobs.c.sweep == sweep)
        query = sa.select(jobs.c.status, sa.func.count()).where(*cond).group_by(jobs.c.status)
        counts = {status: n for status, n in conn.execute(query)}
    scope = " and ".join([*([f"stage '{stage}'"] if stage else []), *([f"sweep '{sweep}'"] if sweep else [])])
    have = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s)) or "no jobs"
    return [f"no {' or '.join(wanted)} job in {scope or 'the queue'} ({have})"]


def only_sweep(db: Database) -> str:
    """The name of the one sweep in the queue; a clear error when there are none or several."""
    with db.read() as conn:
        names = [s.name for s in read_sweeps(conn)]
    if len(names) == 1:
        return names[0]
    if not names:
        raise UsageError(f"no sweep in {db.display_url}", hint="run `sweeper enqueue GRID.yaml` first")
    raise UsageError(f"the queue holds {len(names)} sweeps: {', '.join(names)}", hint="choose one with --sweep NAME")
