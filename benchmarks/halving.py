"""Successive halving against the full grid, on real Fashion-MNIST, with 2 workers (BENCHMARKS.md).

    python benchmarks/halving.py --root ~/sweeper-runs/halving --out benchmarks/results/halving.json

Three sweeps, back to back, each with `sweeper work --workers 2 --threads-per-worker 1`:

  halving     the assignment's 72-config model grid (jobs/grids/assignment.yaml's model_search
              axes; lr 0.01, momentum 0.9, batch 32) trained 1 epoch with a held-out validation split, then
              `promote` the best third by val_accuracy to 2 epochs, and the best third of those to 4
              (72 -> 24 -> 8; eta = 3);
  full        the same 72 configurations, each trained straight to 4 epochs (the top rung's);
  disconnect  the halving sweep again, its workers SIGKILLed twice: once at the rung boundary (the
              moment rung 0's last job is done) and once in the middle of rung 1 (half its jobs
              done, one with a checkpoint of its own); fresh workers take over each time.

Figures: compute as job time (each attempt from claim to end, summed: robust to how busy the
machine is, as a ratio), wall time (first claim to last finish: measured on a machine shared with
other work, so only indicative), configuration-epochs trained; the regret (test accuracy of the
configuration halving chose against the full grid's best, with the binomial standard error of the
difference); the rung at which the full grid's best configuration was eliminated; and whether the
disconnected run promoted the same configurations with the same final metrics, bit for bit.
Each phase writes the JSON as it ends, so a cut-short run keeps what it measured. Run again on
finished states, it only reads them (`sweeper work` finds nothing to do), so phases can run as
separate processes, even at the same time, and be analysed together afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.assignment_run import load

REPO = Path(__file__).resolve().parents[1]
AXES = """\
      conv1.kernel: [3, 5]
      conv1.channels: [8, 16, 32]
      conv2.kernel: [3, 5]
      conv2.channels: [8, 16, 32]
      dense: [64, 100]"""
CLOCKS = ("time_to_target_s", "total_train_s", "images_per_s", "eval_s", "checkpoint_s", "checkpoints")


def defaults(a: argparse.Namespace) -> str:
    # The assignment's defaults (jobs/grids/assignment.yaml) with the training setting its train grid
    # found best (lr 0.01, momentum 0.9, batch 32; docs/assignment-report), on a subset, a fixed number of epochs:
    # at lr 0.001 a 1,000-image epoch is 31 steps, too few for rung 0 to rank anything.
    return (
        "{dataset: fashion-mnist, seed: 0, init: xavier_uniform, lr: 0.01, momentum: 0.9, batch_size: 32,"
        f" train_subset: {a.train_subset}, val_subset: {a.val_subset}, test_subset: {a.test_subset},"
        " target_train_acc: 0.90, stop_at_target: false, eval_train: false, checkpoint_every_s: 3, device: cpu}"
    )


def halving_grid(a: argparse.Namespace) -> str:
    e0, e1, e2 = a.epochs
    return f"""\
sweep: halving
defaults: {defaults(a)}
stages:
  rung0:
    kind: train
    params: {{max_epochs: {e0}}}
    grid:
{AXES}
  rung1:
    promote: {{stage: rung0, top: 24, by: val_accuracy, mode: max, max_epochs: {e1}}}
  rung2:
    promote: {{stage: rung1, top: 8, by: val_accuracy, mode: max, max_epochs: {e2}}}
"""


def full_grid(a: argparse.Namespace) -> str:
    return f"""\
sweep: full
defaults: {defaults(a)}
stages:
  full:
    kind: train
    params: {{max_epochs: {a.epochs[-1]}}}
    grid:
{AXES}
"""


def work(state: Path, grid: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--workers", "2", "--threads-per-worker", "1", "--no-tracking", "--lease-ttl", "10", "--retry-backoff", "0"]
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper.cli", "work", str(grid), "--state", str(state), *args, "--wait"],
        cwd=REPO,
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )


def query(state: Path, sql: str) -> list[tuple]:
    try:
        con = sqlite3.connect(state / "queue.db", timeout=30)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return []


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def kill_when(proc: subprocess.Popen, state: Path, ready: str, what: str) -> dict[str, Any]:
    """SIGKILL the workers' process group the moment `ready` (SQL returning one truthy value) holds."""
    while proc.poll() is None:
        rows = query(state, ready)
        if rows and rows[0][0]:
            # The worker processes first: each is its own process group (worker.py), and once the
            # supervisor is gone a live worker finishes its job and leaves gracefully: no disconnect.
            for pid in [*children(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(60)
            running = query(state, "select stage, count(*) from jobs where status = 'running' group by stage")
            done = query(state, "select stage, count(*) from jobs where status = 'done' group by stage")
            return {"at": what, "t": time.time(), "running": dict(running), "done": dict(done)}
        time.sleep(0.05)
    raise SystemExit(f"the workers ended before '{what}'")


def run(name: str, root: Path, text: str, kills: list[tuple[str, str]] = ()) -> dict[str, Any]:
    state, grid, log = root / name / "state", root / name / "grid.yaml", root / name / "work.log"
    grid.parent.mkdir(parents=True, exist_ok=True)
    grid.write_text(text)
    record = root / name / "kills.json"
    unfinished = "select count(*) from jobs where status in ('blocked', 'pending', 'running')"
    if kills and record.exists() and query(state, unfinished) == [(0,)]:
        killed = json.loads(record.read_text())  # a finished run, analysed again
    else:
        killed = []
        for sql, what in kills:
            proc = work(state, grid, log)
            killed.append(kill_when(proc, state, sql, what))
            record.write_text(json.dumps(killed, indent=2))
    proc = work(state, grid, log)
    if proc.wait() != 0:
        raise SystemExit(f"{name}: sweeper work exited {proc.returncode}; see {log}")
    sweep = text.split("\n", 1)[0].split(": ", 1)[1]
    jobs = load(state, sweep)
    claims: dict[str, list[tuple[str, int, float]]] = {}
    for job_id, attempt, ts in query(state, "select job_id, attempt, ts from events where type = 'claimed'"):
        claims.setdefault(job_id, []).append(("claimed", attempt, ts))
    for j in jobs:
        j["events"] = claims.get(j["id"], [])
    starts = [j["started_at"] for j in jobs if j["started_at"]]
    ends = [j["finished_at"] for j in jobs if j["finished_at"]]
    return {"jobs": jobs, "wall_s": max(ends) - min(starts), "kills": killed}


def arch(params: dict[str, Any]) -> str:
    c1, c2 = params["conv1"], params["conv2"]
    return f"conv1 {c1['channels']}x{c1['kernel']} conv2 {c2['channels']}x{c2['kernel']} dense {params['dense']}"


def summarize(name: str, r: dict[str, Any], n_test: int) -> dict[str, Any]:
    jobs = r["jobs"]
    by_id = {j["id"]: j for j in jobs}
    own_epochs = 0.0
    own_train_s = 0.0
    for j in jobs:
        res = j["result"] or {}
        p = j["resolved_params"] or j["params"]
        up = by_id.get(p.get("continue_from") or "")
        own_epochs += res.get("epochs", 0) - ((up["result"] or {}).get("epochs", 0) if up else 0)
        own_train_s += res.get("total_train_s", 0) - ((up["result"] or {}).get("total_train_s", 0) if up else 0)
    return {
        "jobs": len(jobs),
        "done": sum(j["status"] == "done" for j in jobs),
        "job_s": sum(j["job_s"] for j in jobs),
        "wall_s": r["wall_s"],
        "config_epochs": own_epochs,
        "train_s": own_train_s,
        "kills": r["kills"],
    }


def best(jobs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Best by `metric` (max), ties to queue order, as the queue ranks."""
    return min(enumerate(jobs), key=lambda ij: (-ij[1]["result"][metric], ij[0]))[1]


def se_diff(p1: float, p2: float, n: int) -> float:
    return math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path.home() / "sweeper-runs" / "halving")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/halving.json")
    ap.add_argument("--train-subset", type=int, default=1000)
    ap.add_argument("--val-subset", type=int, default=1000)
    ap.add_argument("--test-subset", type=int, default=2000)
    ap.add_argument("--epochs", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    ap.add_argument("--phases", default="halving,full,disconnect")
    a = ap.parse_args()
    a.root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "setup": {
            "data": f"Fashion-MNIST: first {a.train_subset} training images to train on, the last {a.val_subset} "
            f"held out for validation, the first {a.test_subset} test images",
            "grid": "jobs/grids/assignment.yaml's model_search axes (72 configurations); lr 0.01, momentum 0.9, batch 32",
            "epochs": a.epochs,
            "eta": 3,
            "workers": "2 x 1 torch thread, SQLite queue, no MLflow",
            "cpu": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
        }
    }
    runs: dict[str, dict[str, Any]] = {}

    def save() -> None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2, default=str) + "\n")

    for phase in a.phases.split(","):
        t0 = time.time()
        if phase == "halving":
            runs[phase] = run(phase, a.root, halving_grid(a))
        elif phase == "full":
            runs[phase] = run(phase, a.root, full_grid(a))
        elif phase == "disconnect":
            n1 = 24
            runs[phase] = run(
                phase,
                a.root,
                halving_grid(a),
                kills=[
                    ("select count(*) = 72 from jobs where stage = 'rung0' and status = 'done'", "rung boundary 0/1"),
                    (
                        f"select (select count(*) from jobs where stage = 'rung1' and status = 'done') >= {n1 // 2} "
                        "and exists (select 1 from jobs j join checkpoints c on c.job_id = j.id "
                        "where j.stage = 'rung1' and j.status = 'running')",
                        "middle of rung 1",
                    ),
                ],
            )
        out[phase] = summarize(phase, runs[phase], a.test_subset)
        out[phase]["phase_wall_s"] = time.time() - t0
        out[phase]["loadavg_end"] = os.getloadavg()
        analyse(out, runs, a.test_subset)
        save()
        print(f"{phase}: {json.dumps(out[phase], default=str)}", flush=True)


def analyse(out: dict[str, Any], runs: dict[str, dict[str, Any]], n_test: int) -> None:
    if "halving" in runs:
        h = runs["halving"]["jobs"]
        rungs = {s: [j for j in h if j["stage"] == s] for s in ("rung0", "rung1", "rung2")}
        out["survivors"] = {
            s: [arch(j["resolved_params"] or j["params"]) for j in js] for s, js in rungs.items() if s != "rung0"
        }
        chosen = best(rungs["rung2"], "val_accuracy")
        out["halving_choice"] = {
            "config": arch(chosen["resolved_params"]),
            "val_accuracy": chosen["result"]["val_accuracy"],
            "test_accuracy": chosen["result"]["test_accuracy"],
        }
    if "halving" in runs and "full" in runs:
        f = [j for j in runs["full"]["jobs"] if j["status"] == "done"]
        by_val, by_test = best(f, "val_accuracy"), best(f, "test_accuracy")
        hc = out["halving_choice"]
        out["full_choice"] = {
            "by_val": {
                "config": arch(by_val["params"]),
                **{k: by_val["result"][k] for k in ("val_accuracy", "test_accuracy")},
            },
            "by_test": {
                "config": arch(by_test["params"]),
                **{k: by_test["result"][k] for k in ("val_accuracy", "test_accuracy")},
            },
        }
        for key, ref in (("regret_vs_full_by_val", by_val), ("regret_vs_full_by_test", by_test)):
            p_full, p_h = ref["result"]["test_accuracy"], hc["test_accuracy"]
            out[key] = {"regret": p_full - p_h, "se": se_diff(p_full, p_h, n_test), "n_test": n_test}
        # where the full grid's best configurations were in halving
        where = {}
        for label, ref in (("by_val", by_val), ("by_test", by_test)):
            name = arch(ref["params"])
            reached = [s for s, names in (("rung0", None), *out["survivors"].items()) if names is None or name in names]
            rung0 = [j for j in runs["halving"]["jobs"] if j["stage"] == "rung0"]
            order = sorted(range(len(rung0)), key=lambda i: (-rung0[i]["result"]["val_accuracy"], i))
            rank0 = 1 + next(r for r, i in enumerate(order) if arch(rung0[i]["params"]) == name)
            where[label] = {"config": name, "last_rung_reached": reached[-1], "rank_in_rung0_by_val": rank0}
        out["full_best_in_halving"] = where
        # the ranking at 4 epochs against rung 0's at 1 epoch: does the cheap rung keep the order?
        h0 = {arch(j["params"]): j["result"]["val_accuracy"] for j in runs["halving"]["jobs"] if j["stage"] == "rung0"}
        full = {arch(j["params"]): j["result"]["val_accuracy"] for j in f}
        out["rank_correlation_rung0_vs_full"] = spearman([h0[k] for k in full], list(full.values()))
        # promoted jobs continue checkpoints: the top rung must equal the full grid's straight runs, bit for bit
        straight = {arch(j["params"]): j["result"]["test_loss"] for j in f}
        top = [j for j in runs["halving"]["jobs"] if j["stage"] == "rung2"]
        out["top_rung_test_loss_equal_to_full_grid"] = sum(
            j["result"]["test_loss"] == straight.get(arch(j["resolved_params"])) for j in top
        )
        out["top_rung_jobs"] = len(top)
        out["compute_ratio_job_s"] = out["halving"]["job_s"] / out["full"]["job_s"]
        out["compute_ratio_train_s"] = out["halving"]["train_s"] / out["full"]["train_s"]
        out["compute_ratio_config_epochs"] = out["halving"]["config_epochs"] / out["full"]["config_epochs"]
        out["wall_ratio"] = out["halving"]["wall_s"] / out["full"]["wall_s"]
    if "halving" in runs and "disconnect" in runs:

        def finals(jobs: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                f"{j['stage']} {arch(j['resolved_params'] or j['params'])}": {
                    k: v for k, v in (j["result"] or {}).items() if k not in CLOCKS
                }
                for j in jobs
            }

        d = runs["disconnect"]["jobs"]
        same_survivors = [arch(j["resolved_params"]) for j in d if j["stage"] != "rung0"] == [
            arch(j["resolved_params"]) for j in runs["halving"]["jobs"] if j["stage"] != "rung0"
        ]
        out["disconnect_same_survivors"] = same_survivors
        out["disconnect_same_final_metrics"] = finals(d) == finals(runs["halving"]["jobs"])
        out["disconnect_extra_job_s"] = out["disconnect"]["job_s"] - out["halving"]["job_s"]
        out["disconnect_lost_attempts"] = lost_attempts(runs["disconnect"])


def lost_attempts(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts the kills cut off: claimed, never ended (a SIGKILL leaves no event), and what they cost."""
    kills = [k["t"] for k in r["kills"]]
    out = []
    for j in r["jobs"]:
        if j["attempt"] < 2:
            continue
        first = [e for e in j.get("events", []) if e[0] == "claimed" and e[1] == 1]
        if first:
            claimed = first[0][2]
            killed = min((t for t in kills if t >= claimed), default=None)
            out.append({"job": j["id"], "stage": j["stage"], "lost_s": None if killed is None else killed - claimed})
    return out


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            k = i
            while k + 1 < len(order) and v[order[k + 1]] == v[order[i]]:
                k += 1
            for m in range(i, k + 1):
                r[order[m]] = (i + k) / 2
            i = k + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


if __name__ == "__main__":
    main()
