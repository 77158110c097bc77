"""Mirrored mode (Colab, Drive): what the snapshots cost.

    python benchmarks/mirror_overhead.py [--jobs 200] [--snapshots 20] [--train-jobs 3] [--repeats 3] [--no-tracking]

Writes benchmarks/results/mirror_overhead.json. Three measurements, each against a baseline taken
in the same run:

1. Snapshot of a 200-job sweep: the queue after 200 finished noop jobs (results, events, two
   checkpoint records each). Time and size of one snapshot (backup API, sha256, copy to the
   "mount", rename) and of one restore, against a plain copy of the same file (shutil.copyfile +
   fsync), which is neither consistent nor verified.
2. Stall of the training thread: a loop of small torch matmuls (about 1 ms each) on the main
   thread while the snapshotter pushes snapshots of that queue back to back in a background
   thread, against the same loop with no snapshots. Reports the slowest iterations.
3. Training throughput: the same `kind: train` grid (synthetic data, a checkpoint every second,
   each one triggering a snapshot) run by two `sweeper work` processes at the same time, one
   with --mirror off and one with --mirror on (a plain local directory forced into mirrored
   mode), one torch thread each, --repeats times. Running them side by side makes the
   comparison paired: on a shared machine, load from elsewhere hits both alike. Throughput is
   images / training seconds as the train job reports it; job wall time is finished_at -
   started_at from the queue.

The "mount" is a local directory here: this isolates the CPU and thread cost on the machine
that trains. On Google Drive the copy takes longer, but it runs in the background thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "mirror_overhead.json"


def sweeper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    for var in ("SWEEPER_DB", "SWEEPER_STATE", "MLFLOW_TRACKING_URI", "SWEEPER_MIRROR"):
        full_env.pop(var, None)
    done = subprocess.run([sys.executable, "-m", "sweeper.cli", *args], env=full_env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweeper {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


# ---------------------------------------------------------------------------------------------
# 1. Snapshot time and size


def populated_queue(root: Path, jobs: int) -> Path:
    grid = root / "noop.yaml"
    grid.write_text(
        "sweep: bench\nstages:\n  a:\n    kind: noop\n    params: {steps: 2, checkpoint: true}\n"
        f"    grid: {{value: {list(range(jobs))}}}\n"
    )
    state = root / "noop-state"
    sweeper("enqueue", str(grid), "--state", str(state), "--mirror", "off")
    sweeper("work", "--state", str(state), "--mirror", "off", "--no-tracking")
    return state / "queue.db"


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def ms(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values) * 1e3, 3),
        "min_ms": round(min(values) * 1e3, 3),
        "max_ms": round(max(values) * 1e3, 3),
    }


def snapshot_cost(db: Path, root: Path, n: int) -> dict:
    from sweeper.mirrored.mirror import SnapshotChain

    mount = root / "mount"
    mount.mkdir()
    scratch = root / "scratch"
    scratch.mkdir()
    chain = SnapshotChain(mount / "queue.db")
    push = timed(lambda: chain.push(db, scratch, unless_sha=None), n)
    snap = chain.list()[0]
    restore_to = scratch / "restored.db"
    restore = timed(lambda: chain.restore(restore_to, print), n)

    def plain_copy() -> None:
        dst = scratch / "copy.db"
        shutil.copyfile(db, dst)
        fd = os.open(dst, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    copy = timed(plain_copy, n)
    return {
        "db_bytes": db.stat().st_size,
        "snapshot_bytes": snap.path.stat().st_size,
        "snapshots_kept": len(chain.list()),
        "push": ms(push),
        "restore": ms(restore),
        "baseline_plain_copy": ms(copy),
        "push_vs_plain_copy": round(statistics.median(push) / statistics.median(copy), 2),
    }


# ---------------------------------------------------------------------------------------------
# 2. Stall of the training thread


def stall(db: Path, root: Path, seconds: float) -> dict:
    import torch

    from sweeper.mirrored.mirror import SnapshotChain, lower_thread_priority

    torch.set_num_threads(1)
    a = torch.randn(96, 96)
    chain = SnapshotChain(root / "mount2" / "queue.db")
    scratch = root / "scratch2"
    scratch.mkdir()

    def loop(every_s: float | None) -> dict:
        """The matmul loop; with every_s, a thread like the Snapshotter pushes that often (0: back to back)."""
        halt = threading.Event()
        pushes = 0

        def pusher() -> None:
            nonlocal pushes
            lower_thread_priority()
            while not halt.wait(every_s):
                chain.push(db, scratch, unless_sha=None)
                pushes += 1

        thread = threading.Thread(target=pusher, daemon=True) if every_s is not None else None
        if thread:
            thread.start()
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            for _ in range(8):
                a @ a
            times.append(time.perf_counter() - t0)
        halt.set()
        if thread:
            thread.join()
        times.sort()
        return {
            "iterations": len(times),
            "median_ms": round(statistics.median(times) * 1e3, 3),
            "p99_ms": round(times[int(len(times) * 0.99)] * 1e3, 3),
            "max_ms": round(times[-1] * 1e3, 3),
            "snapshots_pushed": pushes,
        }

    quiet = loop(None)
    paced = loop(1.0)  # the Snapshotter's pace at most: one snapshot a second
    busy = loop(0.0)
    return {
        "baseline_no_snapshots": quiet,
        "one_snapshot_a_second": paced,
        "snapshots_back_to_back": busy,
        "extra_p99_ms_one_a_second": round(paced["p99_ms"] - quiet["p99_ms"], 3),
        "extra_max_ms_one_a_second": round(paced["max_ms"] - quiet["max_ms"], 3),
        "extra_max_ms_back_to_back": round(busy["max_ms"] - quiet["max_ms"], 3),
        "median_iteration_ratio_back_to_back": round(busy["median_ms"] / quiet["median_ms"], 3),
    }


# ---------------------------------------------------------------------------------------------
# 3. Training throughput, mirror on vs off


def train_grid(root: Path, jobs: int) -> Path:
    grid = root / "train.yaml"
    grid.write_text(
        "sweep: mirrorbench\nstages:\n  t:\n    kind: train\n"
        "    params: {dataset: synthetic, train_subset: 3000, test_subset: 500, max_epochs: 1,\n"
        "             checkpoint_every_s: 1.0, eval_train: false}\n"
        f"    grid: {{seed: {list(range(jobs))}}}\n"
    )
    return grid


def train_run(root: Path, grid: Path, mirror: str, tag: str, tracking: bool) -> subprocess.Popen:
    """Start `sweeper work` on a fresh state directory (enqueued first); one torch thread."""
    state = root / f"train-{tag}"
    env = {"SWEEPER_MIRROR_DIR": str(root / f"local-{tag}")}
    sweeper("enqueue", str(grid), "--state", str(state), "--mirror", mirror, env=env)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    args = ["work", "--state", str(state), "--mirror", mirror, "--threads-per-worker", "1"]
    if not tracking:
        args.append("--no-tracking")
    log = open(root / f"{tag}.log", "wb")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen([sys.executable, "-m", "sweeper.cli", *args], env=full_env, stdout=log, stderr=log)


def train_result(root: Path, mirror: str, tag: str) -> dict:
    import sqlalchemy as sa

    from sweeper.config import resolve_settings
    from sweeper.mirrored.mirror import open_state

    state = root / f"train-{tag}"
    os.environ["SWEEPER_MIRROR_DIR"] = str(root / f"local-{tag}")
    settings = resolve_settings(state=state, tracking=False)
    with open_state(settings, command="status", access="read", mirror=mirror, log=lambda _: None) as session:
        engine = sa.create_engine(session.settings.db_url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT result, started_at, finished_at, status FROM jobs")).all()
        engine.dispose()
    if any(r.status != "done" for r in rows):
        raise SystemExit(f"a train job did not finish:\n{(root / f'{tag}.log').read_text()[-3000:]}")
    results = [json.loads(r.result) if isinstance(r.result, str) else r.result for r in rows]
    images = sum(r["images_per_s"] * r["total_train_s"] for r in results)
    train_s = sum(r["total_train_s"] for r in results)
    return {
        "mirror": mirror,
        "images_per_s": round(images / train_s, 1),
        "train_s": round(train_s, 3),
        "job_wall_s": round(sum(r.finished_at - r.started_at for r in rows), 3),
        "checkpoints": sum(r["checkpoints"] for r in results),
        "snapshots_kept": len(list((state / "snapshots").glob("*.db"))),
    }


def throughput(root: Path, jobs: int, repeats: int, tracking: bool) -> dict:
    """Mirror off and on run at the same time, one torch thread each: whatever else loads the
    machine loads both alike, so their ratio is a paired measurement."""
    grid = train_grid(root, jobs)
    pairs = []
    for i in range(repeats):
        procs = {mirror: train_run(root, grid, mirror, f"{mirror}{i}", tracking) for mirror in ("off", "on")}
        cpu = {}
        for mirror, proc in procs.items():
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time, all its threads
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                log = (root / f"{mirror}{i}.log").read_text()[-3000:]
                raise SystemExit(f"sweeper work --mirror {mirror} failed:\n{log}")
            cpu[mirror] = usage.ru_utime + usage.ru_stime
        pair = {m: {**train_result(root, m, f"{m}{i}"), "cpu_s": round(cpu[m], 2)} for m in ("off", "on")}
        pair["ratio_cpu_s"] = round(cpu["on"] / cpu["off"], 4)
        pair["ratio_images_per_s"] = round(pair["on"]["images_per_s"] / pair["off"]["images_per_s"], 4)
        pair["ratio_job_wall"] = round(pair["on"]["job_wall_s"] / pair["off"]["job_wall_s"], 4)
        print(json.dumps(pair), flush=True)
        pairs.append(pair)
    ratio = statistics.median(p["ratio_images_per_s"] for p in pairs)
    wall = statistics.median(p["ratio_job_wall"] for p in pairs)
    cpu = statistics.median(p["ratio_cpu_s"] for p in pairs)
    return {
        "jobs_per_run": jobs,
        "tracking": tracking,
        "design": "off and on run concurrently (paired), 1 torch thread each, a checkpoint (and so a snapshot) every second",
        "pairs": pairs,
        "median_ratio_images_per_s_on_vs_off": ratio,
        "slowdown_images_per_s": round(1 - ratio, 4),
        "median_ratio_job_wall_on_vs_off": wall,
        "slowdown_job_wall": round(wall - 1, 4),
        "median_ratio_cpu_s_on_vs_off": cpu,
        "extra_cpu": round(cpu - 1, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200, help="noop jobs in the queue that is snapshotted")
    ap.add_argument("--snapshots", type=int, default=20, help="snapshots (and restores, copies) timed")
    ap.add_argument("--stall-s", type=float, default=5.0, help="seconds of the stall loop, per case")
    ap.add_argument("--train-jobs", type=int, default=3, help="train jobs per throughput run")
    ap.add_argument("--repeats", type=int, default=5, help="throughput pairs (mirror off and on side by side)")
    ap.add_argument("--no-tracking", action="store_true", help="run the train jobs without MLflow")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sweeper-mirror-bench-"))
    try:
        db = populated_queue(root, args.jobs)
        snap = snapshot_cost(db, root, args.snapshots)
        print(json.dumps({"snapshot": snap}), flush=True)
        stalls = stall(db, root, args.stall_s)
        print(json.dumps({"stall": stalls}), flush=True)
        train = throughput(root, args.train_jobs, args.repeats, not args.no_tracking)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "benchmark": "mirror_overhead",
        "command": "python benchmarks/mirror_overhead.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": "2-core machine shared with other work while this ran; the 'mount' is a local directory.",
        "snapshot_of_200_job_sweep": {"jobs": args.jobs, **snap},
        "training_thread_stall": stalls,
        "training_throughput": train,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    summary = {
        "snapshot_ms": snap["push"]["median_ms"],
        "snapshot_bytes": snap["snapshot_bytes"],
        "push_vs_plain_copy": snap["push_vs_plain_copy"],
        "extra_p99_stall_ms_one_a_second": stalls["extra_p99_ms_one_a_second"],
        "slowdown_images_per_s": train["slowdown_images_per_s"],
        "slowdown_job_wall": train["slowdown_job_wall"],
        "extra_cpu": train["extra_cpu"],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
