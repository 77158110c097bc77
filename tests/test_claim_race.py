"""Eight worker processes race for 500 jobs: every job runs exactly once, nobody sees a lock error,
and the stage that needs all 500 starts when the last of them completes (no settle lost to a race)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from .conftest import run_cli, start_worker, stop_process

JOBS = 500
WORKERS = 8


@pytest.mark.slow
def test_eight_workers_run_each_of_500_jobs_exactly_once(tmp_path: Path, db_url: str):
    counter = tmp_path / "counter"
    counter.mkdir()
    grid = tmp_path / "race.yaml"
    grid.write_text(
        "sweep: race\nstages:\n  a:\n    kind: noop\n"
        f"    params: {{checkpoint: false, counter_dir: '{counter}'}}\n"
        f"    grid: {{value: {list(range(JOBS))}}}\n"
        f"  b:\n    kind: noop\n    needs: [a]\n    params: {{checkpoint: false, counter_dir: '{counter}'}}\n"
    )
    args = ["--state", str(tmp_path / "state"), "--db", db_url]
    assert run_cli("enqueue", str(grid), *args).returncode == 0

    logs = [tmp_path / f"w{i}.log" for i in range(WORKERS)]
    procs = [start_worker(*args, "--no-tracking", log=log) for log in logs]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            stop_process(p)
    output = "\n".join(log.read_text() for log in logs)
    assert codes == [0] * WORKERS, output[-3000:]
    assert "database is locked" not in output.lower() and "Traceback" not in output

    counts = [len(p.read_text().splitlines()) for p in counter.iterdir()]
    assert len(counts) == JOBS + 1 and set(counts) == {1}
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select status, count(*) from jobs group by status")).all() == [("done", JOBS + 1)]
        claims = conn.execute(sa.text("select count(*) from events where type = 'claimed'")).scalar_one()
        busy = conn.execute(sa.text("select count(distinct worker) from events where type = 'claimed'")).scalar_one()
    engine.dispose()
    assert claims == JOBS + 1
    assert busy > 1  # the workers really raced
