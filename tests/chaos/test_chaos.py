"""The chaos test: a real sweep on 3 workers while a seeded monkey kills, freezes and signals them
and cuts the database; afterwards every job is done exactly once and nothing is lost.

The summary (faults by type, jobs, re-claims, lost compute) is printed at the end of the pytest
output. Set SWEEPER_CHAOS_SEED to replay a run's choices (the moments still depend on timing).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from . import pg
from .conftest import SUMMARIES
from .harness import ChaosConfig, CleanRuns, run_chaos

SEEDS = {"sqlite": 6, "postgres": 7}

# serial: the monkey restarts the PostgreSQL server, and both runs time leases against a
# machine they expect to have to themselves (README, Development: the second pass).
pytestmark = pytest.mark.serial


@pytest.fixture(scope="session")
def clean_runs(tmp_path_factory: pytest.TempPathFactory) -> CleanRuns:
    """Clean runs of the train configurations, shared by the SQLite and PostgreSQL runs."""
    return CleanRuns(tmp_path_factory.mktemp("clean"))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sweep_survives_chaos_with_every_job_done_exactly_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, clean_runs: CleanRuns, chaos_cache: Path
) -> None:
    if backend == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'run' / 'state' / 'queue.db'}"
    seed = int(os.environ.get("SWEEPER_CHAOS_SEED", SEEDS[backend]))
    lines: list[str] = []
    cfg = ChaosConfig(
        backend=backend,
        db_url=url,
        workdir=tmp_path / "run",
        seed=seed,
        cache_dir=chaos_cache,
        log=lines.append,
    )
    with pg.restored(url) if backend == "postgres" else contextlib.nullcontext():
        report = run_chaos(cfg, clean_runs)
    SUMMARIES.append(report.summary())
    (tmp_path / "chaos-report.json").write_text(json.dumps(report.to_json(), indent=2))
    (tmp_path / "monkey.log").write_text("\n".join(lines))
    detail = f"{report.summary()}\n(monkey log and worker logs under {tmp_path})"
    assert report.total_faults >= 20, detail
    assert report.faults.get("sigkill") and report.faults.get("sigstop") and report.faults.get("sigterm"), detail
    assert not report.violations, detail


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_dependent_stage_unblocks_by_itself_when_nothing_is_enqueued_again(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, clean_runs: CleanRuns, chaos_cache: Path
) -> None:
    """One enqueue, then chaos: no new wave re-runs the settle, so a settle lost to a race (issue 10,
    write skew on PostgreSQL) would leave `after` blocked and the `--wait` workers polling forever."""
    if backend == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'run' / 'state' / 'queue.db'}"
    seed = int(os.environ.get("SWEEPER_CHAOS_SEED", SEEDS[backend] + 100))
    lines: list[str] = []
    cfg = ChaosConfig(
        backend=backend,
        db_url=url,
        workdir=tmp_path / "run",
        seed=seed,
        cache_dir=chaos_cache,
        log=lines.append,
        waves=False,
        noop_jobs=20,
        dependents=4,
        max_faults=16,
        max_s=480.0,  # one wave of 20 jobs, on a loaded 2-core machine
    )
    with pg.restored(url) if backend == "postgres" else contextlib.nullcontext():
        report = run_chaos(cfg, clean_runs)
    SUMMARIES.append("(one enqueue, no waves) " + report.summary())
    (tmp_path / "chaos-report.json").write_text(json.dumps(report.to_json(), indent=2))
    (tmp_path / "monkey.log").write_text("\n".join(lines))
    detail = f"{report.summary()}\n(monkey log and worker logs under {tmp_path})"
    assert report.waves == 1, detail
    assert report.total_faults >= 8, detail
    assert not report.violations, detail
