"""sweeper: a resumable job-queue sweep orchestrator for PyTorch experiments.

In Python (a notebook): `sweeper.results(state=...)` is every job as a pandas DataFrame (the
columns of `sweeper export --csv`), `sweeper.show(job_id, state=...)` one job as `show --json`
gives it (sweeper/views/frames.py). Importing sweeper loads neither pandas, torch nor mlflow.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def results(state: Any = None, db: str | None = None, sweep: str | None = None, **options: Any) -> Any:
    """Every job as a pandas DataFrame: id, stage, status, times, params.* (effective), metrics.*."""
    from sweeper.views.frames import results as _results

    return _results(state, db, sweep, **options)


def show(job_id: str, state: Any = None, db: str | None = None, **options: Any) -> dict[str, Any]:
    """One job as `sweeper show JOB --json` gives it: params written/resolved/effective, attempts, result."""
    from sweeper.views.frames import show as _show

    return _show(job_id, state, db, **options)


__all__ = ["__version__", "results", "show"]
