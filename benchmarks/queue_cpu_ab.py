"""A/B of the queue's hot path between two checkouts, interleaved in one run: CPU ms per claim+complete.

    git worktree add --detach /tmp/q-base <base-commit>; git worktree add --detach /tmp/q-new HEAD
    python benchmarks/queue_cpu_ab.py /tmp/q-base /tmp/q-new [--jobs 500] [--rounds 10]

Each round runs the bare Queue loop of queue_throughput.py (one process, SQLite) once per checkout,
alternating which goes first. CPU time (user+sys of that process) rather than wall time: on a
2-core machine shared with other work, wall-clock throughput swung 2x between identical runs.
Put both checkouts on the same filesystem (a base under /tmp against the work tree under /work read
5% apart in CPU time; both under /tmp, 1%). Writes benchmarks/results/queue_cpu_ab.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("base")
parser.add_argument("new")
parser.add_argument("--jobs", type=int, default=500)
parser.add_argument("--rounds", type=int, default=10)
args = parser.parse_args()
TREES = {"base": args.base, "mine": args.new}
N, ROUNDS = args.jobs, args.rounds
CODE = r"""
import json, os, tempfile, time
from benchmarks.queue_throughput import grid_text
from sweeper.store.db import open_database
from sweeper.store.queue import Queue
from sweeper.grid.spec import parse_spec
root = tempfile.mkdtemp(prefix="h12-cpu-")
db = open_database(f"sqlite:///{root}/q.db")
q = Queue(db)
q.enqueue(parse_spec(grid_text(N), "bench.yaml"))
q.register_worker("w", "bench", os.getpid(), 1)
c0, w0 = time.process_time(), time.perf_counter()
n = 0
while (job := q.claim("w", 60)) is not None:
    q.complete(job.lease, {"value": job.params["value"]})
    n += 1
c1, w1 = time.process_time(), time.perf_counter()
assert n == N
print(json.dumps({"cpu_ms_per_job": 1000 * (c1 - c0) / n, "wall_ms_per_job": 1000 * (w1 - w0) / n}))
"""
res = {t: [] for t in TREES}
for r in range(ROUNDS):
    for t in ["base", "mine"] if r % 2 == 0 else ["mine", "base"]:
        env = dict(os.environ, PYTHONPATH=TREES[t])
        out = subprocess.run(
            [sys.executable, "-c", f"N={N}\n" + CODE], cwd=TREES[t], env=env, capture_output=True, text=True
        )
        if out.returncode:
            print(out.stderr[-2000:])
            sys.exit(1)
        case = json.loads(out.stdout.strip().splitlines()[-1])
        res[t].append(case)
        print(r, t, {k: round(v, 3) for k, v in case.items()}, flush=True)
summary = {}
for key in ("cpu_ms_per_job", "wall_ms_per_job"):
    b = [c[key] for c in res["base"]]
    m = [c[key] for c in res["mine"]]
    summary[key] = {
        "base_median": round(statistics.median(b), 4),
        "mine_median": round(statistics.median(m), 4),
        "base_min": round(min(b), 4),
        "mine_min": round(min(m), 4),
        "throughput_ratio_mine_over_base_median": round(statistics.median(b) / statistics.median(m), 3),
        "throughput_ratio_mine_over_base_best": round(min(b) / min(m), 3),
    }
print(json.dumps(summary, indent=1))
out = Path(__file__).resolve().parent / "results" / "queue_cpu_ab.json"
out.write_text(
    json.dumps({"trees": TREES, "jobs": N, "rounds": ROUNDS, "runs": res, "summary": summary}, indent=1) + "\n"
)
