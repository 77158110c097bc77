"""Queue throughput: no-op jobs claimed and completed by 1, 2, 4 and 8 worker processes.

    python benchmarks/queue_throughput.py [--jobs 2000] [--workers 1 2 4 8] [--backends sqlite postgres]

Writes benchmarks/results/queue_throughput.json. For each backend and worker count it measures
  * `queue`: the bare Queue API loop (claim, complete) in each process;
  * `worker`: the real worker loop (`kind: noop`, tracking off), which adds the JobContext, the
    heartbeat, the checkpoint lookup and the log lines;
throughput = (jobs - 1) / (last finish - first finish), read from the database, so process
start-up and the first job's cold imports are not counted. The baseline, measured in the same run, is Optuna's RDB storage on SQLite: one
process running trials of an objective that returns at once. The per-job cost of MLflow
tracking (one run per job, params, one metric, end) is measured against tracking off.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.scratch_db import make_db

RESULTS = Path(__file__).resolve().parent / "results" / "queue_throughput.json"


def grid_text(n: int, steps: int = 1) -> str:
    return (
        "sweep: bench\nstages:\n  a:\n    kind: noop\n"
        f"    params: {{checkpoint: false, steps: {steps}}}\n    grid: {{value: {list(range(n))}}}\n"
    )


def enqueue(url: str, n: int) -> None:
    from sweeper.grid.spec import parse_spec
    from sweeper.store.db import open_database
    from sweeper.store.queue import Queue

    db = open_database(url)
    Queue(db).enqueue(parse_spec(grid_text(n), "bench.yaml"))
    db.dispose()


def queue_loop(url: str, index: int, start: multiprocessing.Event) -> None:
    from sweeper.store.db import open_database
    from sweeper.store.queue import Queue

    db = open_database(url)
    queue = Queue(db)
    worker = f"bench-{index}"
    queue.register_worker(worker, "bench", os.getpid(), 1)
    start.wait()
    while (job := queue.claim(worker, 60)) is not None:
        queue.complete(job.lease, {"value": job.params["value"]})
    db.dispose()


def worker_loop(url: str, state: str, index: int, start: multiprocessing.Event, tracking: bool) -> None:
    import io
    import sys

    from sweeper.config import Settings, default_tracking_uri
    from sweeper.running.worker import Worker, WorkerOptions

    settings = Settings(Path(state), url, default_tracking_uri(Path(state)) if tracking else None)
    opts = WorkerOptions(settings=settings, threads_per_worker=1)
    sys.stderr = io.StringIO()  # the per-job log lines are not what we measure here
    start.wait()
    Worker(opts, console_log=lambda line: None).run()


def measure(url: str) -> dict:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        # From the first finish to the last: the first job pays for cold imports, not the queue.
        first, last, done = conn.execute(
            sa.text("select min(finished_at), max(finished_at), count(*) from jobs where status = 'done'")
        ).one()
        total = conn.execute(sa.text("select count(*) from jobs")).scalar_one()
    engine.dispose()
    seconds = last - first
    return {"jobs": done, "total": total, "seconds": round(seconds, 3), "jobs_per_s": round((done - 1) / seconds, 1)}


def run_case(backend: str, mode: str, workers: int, jobs: int, tracking: bool = False) -> dict:
    root = Path(tempfile.mkdtemp(prefix="sweeper-bench-"))
    url, drop = make_db(backend, root)
    try:
        enqueue(url, jobs)
        ctx = multiprocessing.get_context("spawn")
        start = ctx.Event()
        if mode == "queue":
            procs = [ctx.Process(target=queue_loop, args=(url, i, start)) for i in range(workers)]
        else:
            procs = [ctx.Process(target=worker_loop, args=(url, str(root), i, start, tracking)) for i in range(workers)]
        for p in procs:
            p.start()
        time.sleep(3.0 + workers)  # let every process import and connect before the gun
        start.set()
        for p in procs:
            p.join()
        result = measure(url)
        assert result["jobs"] == jobs, f"only {result['jobs']} of {jobs} jobs done"
        return {"backend": backend, "mode": mode, "workers": workers, "tracking": tracking, **result}
    finally:
        drop()
        shutil.rmtree(root, ignore_errors=True)


def optuna_baseline(trials: int) -> dict:
    import logging

    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="optuna-bench-"))
    try:
        study = optuna.create_study(storage=f"sqlite:///{root / 'optuna.db'}", study_name="bench")
        t = time.perf_counter()
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=trials)
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "tool": f"optuna {optuna.__version__} RDB storage (SQLite)",
        "trials": trials,
        "seconds": round(seconds, 3),
        "trials_per_s": round(trials / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--tracking-jobs", type=int, default=100)
    args = parser.parse_args()

    results = []
    for backend in args.backends:
        for mode in ("queue", "worker"):
            for n in args.workers:
                case = run_case(backend, mode, n, args.jobs)
                print(json.dumps(case), flush=True)
                results.append(case)
    tracking = {
        "off": run_case("sqlite", "worker", 1, args.tracking_jobs, tracking=False),
        "on": run_case("sqlite", "worker", 1, args.tracking_jobs, tracking=True),
    }
    per_job_ms = 1000 * (1 / tracking["on"]["jobs_per_s"] - 1 / tracking["off"]["jobs_per_s"])
    baseline = optuna_baseline(min(args.jobs, 500))
    best_single = next(r for r in results if r["backend"] == "sqlite" and r["mode"] == "worker" and r["workers"] == 1)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": "2-core machine; other work may have shared it. Throughput from database timestamps.",
        "cases": results,
        "tracking": {**tracking, "mlflow_overhead_ms_per_job": round(per_job_ms, 1)},
        "baseline": baseline,
        "ratio_worker_1proc_sqlite_vs_optuna": round(best_single["jobs_per_s"] / baseline["trials_per_s"], 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("tracking", "baseline", "ratio_worker_1proc_sqlite_vs_optuna")}, indent=2))


if __name__ == "__main__":
    main()
