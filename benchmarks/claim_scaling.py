"""Claim throughput on PostgreSQL with and without the settle lock, 1, 2, 4 and 8 processes.

    SWEEPER_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        python benchmarks/claim_scaling.py [--jobs 1000] [--workers 1 2 4 8] [--reps 3]

Writes benchmarks/results/claim_scaling.json. Each process runs the bare Queue loop (claim,
complete) on no-op jobs of stage `a`, while stage `b` (needs a) waits: so every complete settles,
and with the lock on it takes the sweep's settle lock, the worst case for the lock. `unlocked` is
the same code built with `Queue(..., _settle_lock=False)`, i.e. the settle of the old version.

The machine is shared and loaded: the two variants are interleaved, rep by rep and worker count
by worker count, the one going first alternating, so that load hits both alike. Throughput is
(jobs - 1) / (last finish - first finish) from the database; the figure per case is the median
over reps, `ratio` is locked / unlocked of those medians, and `median_pair_ratio` the median of
each rep's back-to-back locked / unlocked ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.scratch_db import make_db

RESULTS = Path(__file__).resolve().parent / "results" / "claim_scaling.json"


def grid_text(n: int) -> str:
    return (
        "sweep: bench\nstages:\n"
        f"  a: {{kind: noop, params: {{checkpoint: false}}, grid: {{value: {list(range(n))}}}}}\n"
        "  b: {kind: noop, needs: [a], grid: {value: [0]}}\n"
    )


def loop(url: str, index: int, locked: bool, ready, go) -> None:
    from sweeper.store.db import open_database
    from sweeper.store.queue import Queue

    db = open_database(url)
    queue = Queue(db, _settle_lock=locked)
    worker = f"bench-{index}"
    ready.wait()
    go.wait()
    while (job := queue.claim(worker, 60, stages_filter=["a"])) is not None:
        queue.complete(job.lease, {"value": job.params["value"]})
    db.dispose()


def run_case(workers: int, jobs: int, locked: bool) -> dict:
    from sweeper.grid.spec import parse_spec
    from sweeper.store.db import open_database
    from sweeper.store.queue import Queue

    root = Path(tempfile.mkdtemp(prefix="sweeper-claims-"))
    url, drop = make_db("postgres", root)
    try:
        db = open_database(url)
        Queue(db).enqueue(parse_spec(grid_text(jobs), "bench.yaml"))
        db.dispose()
        ctx = multiprocessing.get_context("spawn")
        ready, go = ctx.Barrier(workers + 1), ctx.Barrier(workers + 1)
        procs = [ctx.Process(target=loop, args=(url, i, locked, ready, go)) for i in range(workers)]
        for p in procs:
            p.start()
        ready.wait()  # every process imported and connected
        go.wait()
        for p in procs:
            p.join()
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            first, last, done = conn.execute(
                sa.text("select min(finished_at), max(finished_at), count(*) from jobs where status = 'done'")
            ).one()
            b = conn.execute(sa.text("select status from jobs where stage = 'b'")).scalar_one()
        engine.dispose()
        assert done == jobs and b == "pending", (done, b)
        return {"workers": workers, "locked": locked, "jobs": done, "jobs_per_s": round((done - 1) / (last - first), 1)}
    finally:
        drop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    cases = []
    for rep in range(args.reps):
        for n in args.workers:
            order = (True, False) if (rep + n) % 2 == 0 else (False, True)
            for locked in order:
                case = {"rep": rep, **run_case(n, args.jobs, locked)}
                print(json.dumps(case), flush=True)
                cases.append(case)
        write_report(cases, args.jobs, args.workers)  # after every rep: an interrupted run keeps its data


def write_report(cases: list[dict], jobs: int, workers: list[int]) -> None:
    table = []
    for n in workers:
        med = {
            locked: statistics.median(c["jobs_per_s"] for c in cases if c["workers"] == n and c["locked"] == locked)
            for locked in (False, True)
            if any(c["workers"] == n and c["locked"] == locked for c in cases)
        }
        # Each rep ran the two variants back to back: their ratio is the least load-sensitive figure.
        pairs = {}
        for c in cases:
            if c["workers"] == n:
                pairs.setdefault(c["rep"], {})[c["locked"]] = c["jobs_per_s"]
        pair_ratios = [p[True] / p[False] for p in pairs.values() if len(p) == 2]
        if len(med) == 2:
            table.append(
                {
                    "workers": n,
                    "unlocked": med[False],
                    "locked": med[True],
                    "ratio": round(med[True] / med[False], 3),
                    "pair_ratios": [round(r, 3) for r in pair_ratios],
                    "median_pair_ratio": round(statistics.median(pair_ratios), 3),
                }
            )
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": "shared, loaded 2-core machine; locked/unlocked interleaved per rep and worker count",
        "jobs": jobs,
        "reps": len({c["rep"] for c in cases}),
        "table": table,
        "cases": cases,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
