"""How fast `sweeper status` answers on a 10,000-job queue, on SQLite and PostgreSQL.

    python benchmarks/status_speed.py [--jobs 10000] [--repeat 7] [--backends sqlite postgres]

Builds a sweep in mid-flight through the real Queue API (enqueue), then moves jobs into their
states with bulk updates: of a 72% `search` stage, 6,000 done with a result (test_accuracy,
time_to_target_s and a few more metrics), 40 failed with a traceback, 8 running with progress,
the rest pending; a dependent `follow` stage (28%) blocked; 3 events per finished job; 8 live
and 50 stopped workers. Then, per backend (medians of --repeat runs):

  * collect      the dashboard's queries (dashboard.collect, warm connection)
  * render       drawing that snapshot at 80 columns (rich, to a string)
  * cli          `sweeper status` end to end in a fresh process (what a user waits for)
  * cli_json     `sweeper status --json`, the same
Baselines in the same run:
  * naive        reading every job row and counting/ranking in Python (the obvious implementation)
  * startup      `sweeper --help` in a fresh process: interpreter, typer, rich and SQLAlchemy
                 imports, the floor under any command

Writes benchmarks/results/status_speed.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.scratch_db import make_db

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "status_speed.json"
TRACEBACK = (
    'Traceback (most recent call last):\n  File "jobs/kinds/train.py", line 88, in run\n    loss.backward()\n'
    "RuntimeError: kernel size can't be greater than actual input size\n"
)


def build(url: str, n_jobs: int) -> dict[str, int]:
    from sweeper.grid.spec import parse_spec
    from sweeper.store.db import events, jobs, open_database, workers
    from sweeper.store.queue import Queue

    n_search = int(n_jobs * 0.72)
    n_follow = n_jobs - n_search
    grid = (
        "sweep: bench\ndescription: a 10k-job sweep in mid-flight\nstages:\n"
        f"  search:\n    kind: noop\n    grid: {{value: {list(range(n_search))}}}\n"
        f"  follow:\n    kind: noop\n    needs: [search]\n    grid: {{seed: {list(range(n_follow))}}}\n"
        "    params: {upstream: {best_of: search, metric: test_accuracy}}\n"
    )
    db = open_database(url)
    Queue(db).enqueue(parse_spec(grid, "bench.yaml"))
    rng = random.Random(0)
    now = time.time()
    with db.write() as conn:
        ids = list(
            conn.execute(sa.select(jobs.c.id).where(jobs.c.stage == "search").order_by(jobs.c.position)).scalars()
        )
        n_done, n_failed, n_running = min(6000, len(ids) - 100), 40, 8
        done, failed, running = ids[:n_done], ids[n_done : n_done + n_failed], ids[-n_running:]
        rows = []
        for i, job_id in enumerate(done):
            start = now - 86400 + i * 10
            acc = rng.uniform(0.80, 0.90)
            result = {
                "test_accuracy": acc,
                "test_loss": 1 - acc,
                "train_accuracy": acc + 0.02,
                "time_to_target_s": rng.uniform(60, 900) if rng.random() > 0.1 else None,
                "epochs": rng.randint(2, 15),
                "params": rng.randint(10_000, 400_000),
                "dataset": "fashion-mnist",
            }
            rows.append({"i": job_id, "r": result, "s": start, "f": start + rng.uniform(60, 900)})
        conn.execute(
            jobs.update()
            .where(jobs.c.id == sa.bindparam("i"))
            .values(
                status="done",
                result=sa.bindparam("r", type_=jobs.c.result.type),
                started_at=sa.bindparam("s"),
                finished_at=sa.bindparam("f"),
                attempt=1,
                progress=1.0,
            ),
            rows,
        )
        conn.execute(
            jobs.update()
            .where(jobs.c.id.in_(failed))
            .values(status="failed", error=TRACEBACK, failures=3, attempt=3, started_at=now - 500, finished_at=now)
        )
        for k, job_id in enumerate(running):
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(
                    status="running",
                    lease_owner=f"host{k}:{1000 + k}:beef",
                    lease_token=secrets.token_hex(16),
                    lease_expires_at=now + 60,
                    attempt=1,
                    started_at=now - 100,
                    progress=0.3,
                    progress_message=f"epoch 3/15 loss 0.4{k}",
                )
            )
        ev = []
        for job_id in done:
            ev += [
                {"job_id": job_id, "ts": now, "type": t, "worker": "host0:1000:beef", "attempt": 1, "detail": "x"}
                for t in ("claimed", "checkpointed", "done")
            ]
        for start in range(0, len(ev), 5000):
            conn.execute(events.insert(), ev[start : start + 5000])
        wrows = [
            {
                "id": f"host{k}:{1000 + k}:beef",
                "host": f"host{k}",
                "pid": 1000 + k,
                "threads": 1,
                "status": "running" if k < 8 else "stopped",
                "started_at": now - 3600,
                "last_heartbeat": now if k < 8 else now - 600,
                "current_job": running[k] if k < 8 else None,
            }
            for k in range(58)
        ]
        conn.execute(workers.insert(), wrows)
        total = conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one()
    db.dispose()
    return {"jobs": total, "done": len(done), "failed": len(failed), "running": len(running), "events": len(ev)}


def naive(db) -> None:
    """The baseline: every row to Python, then count, time and rank there."""
    from sweeper.store.db import jobs

    with db.read() as conn:
        rows = conn.execute(sa.select(jobs)).all()
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r.stage, r.status)] = counts.get((r.stage, r.status), 0) + 1
    scored = [(r.result or {}).get("test_accuracy") for r in rows if r.status == "done"]
    sorted((s for s in scored if isinstance(s, float)), reverse=True)[:5]


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def cli(args: list[str], url: str, cwd: Path) -> float:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sweeper.cli", *args, *(["--db", url] if args[0] != "--help" else [])],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sweeper {' '.join(args)} failed:\n{proc.stderr}")
    return elapsed


def stats(xs: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs), "n": len(xs)}


def measure(backend: str, n_jobs: int, repeat: int) -> dict[str, object]:
    from rich.console import Console

    from sweeper.store.db import open_database
    from sweeper.views.dashboard import collect
    from sweeper.views.dashview import render

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url, drop = make_db(backend, root)
        try:
            t0 = time.perf_counter()
            shape = build(url, n_jobs)
            build_s = time.perf_counter() - t0
            db = open_database(url, create=False)
            collect(db)  # warm the connection pool, as --watch does after its first tick
            collect_t = timed(lambda: collect(db), repeat)
            naive_t = timed(lambda: naive(db), repeat)
            snap = collect(db)

            def draw() -> None:
                Console(file=io.StringIO(), width=80, force_terminal=True).print(render(snap, 80))

            render_t = timed(draw, repeat)
            db.dispose()
            startup_t = [cli(["--help"], url, root) for _ in range(repeat)]
            cli_t = [cli(["status"], url, root) for _ in range(repeat)]
            json_t = [cli(["status", "--json"], url, root) for _ in range(repeat)]
        finally:
            drop()
    c, nv, st, cl = (statistics.median(x) for x in (collect_t, naive_t, startup_t, cli_t))
    return {
        "backend": backend,
        "shape": shape,
        "build_s": build_s,
        "collect": stats(collect_t),
        "render": stats(render_t),
        "cli": stats(cli_t),
        "cli_json": stats(json_t),
        "baseline_naive": stats(naive_t),
        "baseline_startup": stats(startup_t),
        "collect_vs_naive": c / nv,
        "cli_minus_startup_s": cl - st,
        "cli_vs_startup": cl / st,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    args = ap.parse_args()
    runs = []
    for backend in args.backends:
        print(f"{backend}: building {args.jobs} jobs ...", flush=True)
        r = measure(backend, args.jobs, args.repeat)
        runs.append(r)
        print(
            f"{backend}: collect {r['collect']['median_s'] * 1000:.0f} ms (naive {r['baseline_naive']['median_s'] * 1000:.0f} ms, "
            f"x{r['collect_vs_naive']:.2f}), render {r['render']['median_s'] * 1000:.0f} ms, "
            f"cli {r['cli']['median_s']:.2f} s (startup floor {r['baseline_startup']['median_s']:.2f} s)",
            flush=True,
        )
    doc = {
        "benchmark": "status_speed",
        "command": "python benchmarks/status_speed.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "shared": True,  # other engineers' tests and benchmarks ran on the same 2 cores
            "loadavg_at_end": os.getloadavg(),
        },
        "jobs": args.jobs,
        "repeat": args.repeat,
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
