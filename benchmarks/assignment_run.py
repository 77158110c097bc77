"""Figures of a whole-assignment run (jobs/grids/assignment.yaml) for BENCHMARKS.md, read from its queue.

    sweeper enqueue jobs/grids/assignment.yaml && sweeper work --workers 2 --wait     # the run itself
    python benchmarks/assignment_run.py --state state --out benchmarks/results/assignment_run.json

Wall clock: first claim to last finish. Job time: every attempt of a job, claim to end (summed
per stage; with 2 workers, half a stage's job time is what it adds to the wall clock when both
workers are busy). The seed repeats' cost is their stages' job time. Pruning is serial (each layer
starts from the last one's result), so its wall time is on the critical path; its control
fine-tunes are counted separately. A few run-level checks are computed, not asserted: the JSON
says which hold (the report's own must-show list is jobs/report/checks.py's). The load each
attempt started under (its provenance) is summarised beside the wall time.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobs.report.about import attempt_loads
from jobs.report.stats import config_key  # what makes two jobs one configuration, as the report counts it
from sweeper.store.db import open_database
from sweeper.store.results import SweepView

SEED_TEST_ACCURACY = 0.8834  # the seed report's Step 1 model (88.34 %)


def load(state: Path, sweep: str) -> tuple[list[dict[str, Any]], list[float]]:
    """The sweep's jobs (with job_s, their summed attempt time) and the load each attempt started under."""
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    with engine.connect() as conn:
        q = sa.text(
            "select id, stage, status, label, params, resolved_params, result, started_at, finished_at, "
            "attempt, interruptions from jobs where sweep = :s order by position"
        )
        rows = [dict(r) for r in conn.execute(q, {"s": sweep}).mappings()]
        # job time: each attempt from its claim to its end (done, failed, retried or released)
        events = conn.execute(
            sa.text(
                "select e.job_id, e.attempt, e.type, e.ts from events e join jobs j on j.id = e.job_id "
                "where j.sweep = :s and e.type in ('claimed', 'done', 'failed', 'retried', 'released') "
                "and e.attempt is not null order by e.ts"
            ),
            {"s": sweep},
        ).all()
    engine.dispose()
    claims: dict[tuple[str, int], float] = {}
    busy: dict[str, float] = defaultdict(float)
    for job_id, attempt, kind, ts in events:
        if kind == "claimed":
            claims[(job_id, attempt)] = ts
        elif (job_id, attempt) in claims:
            busy[job_id] += ts - claims.pop((job_id, attempt))
    for r in rows:
        r["job_s"] = busy.get(r["id"], 0.0)
    for r in rows:
        for key in ("params", "resolved_params", "result"):
            if isinstance(r[key], str):
                r[key] = json.loads(r[key])
    database = open_database(f"sqlite:///{state / 'queue.db'}", create=False)
    try:  # the loads as the report reads them
        loads = attempt_loads(SweepView(database, state, sweep))
    finally:
        database.dispose()
    return rows, loads


def minutes(seconds: float) -> float:
    return round(seconds / 60.0, 1)


def summarize(rows: list[dict[str, Any]], loads: list[float]) -> dict[str, Any]:
    done = [r for r in rows if r["status"] == "done" and r["started_at"] and r["finished_at"]]
    start = min(r["started_at"] for r in done)
    end = max(r["finished_at"] for r in done)
    stages: dict[str, dict[str, Any]] = defaultdict(lambda: {"jobs": 0, "job_s": 0.0, "first": None, "last": None})
    for r in done:
        s = stages[r["stage"]]
        s["jobs"] += 1
        s["job_s"] += r["job_s"]
        s["first"] = r["started_at"] if s["first"] is None else min(s["first"], r["started_at"])
        s["last"] = r["finished_at"] if s["last"] is None else max(s["last"], r["finished_at"])
    per_stage = {
        name: {
            "jobs": s["jobs"],
            "job_time_min": minutes(s["job_s"]),
            "mean_job_s": round(s["job_s"] / s["jobs"], 1),
            "starts_min": minutes(s["first"] - start),
            "ends_min": minutes(s["last"] - start),
        }
        for name, s in stages.items()
    }
    total_job_s = sum(s["job_s"] for s in stages.values())
    repeat_s = sum(stages[n]["job_s"] for n in ("model_repeats", "train_repeats") if n in stages)
    prune = [r for r in done if r["stage"].startswith("prune_")]
    prune_wall = (max(r["finished_at"] for r in prune) - min(r["started_at"] for r in prune)) if prune else None
    control_s = sum(float((r["result"] or {}).get("control_finetune_s") or 0.0) for r in prune)
    finetune_s = sum(float((r["result"] or {}).get("finetune_s") or 0.0) for r in prune)
    steps = sum(int((r["result"] or {}).get("steps_tried") or 0) for r in prune)
    controls = sum(1 for r in prune for t in (r["result"] or {}).get("triplets", []) if t.get("control_measured", True))
    return {
        "wall_min": minutes(end - start),
        "job_time_min": minutes(total_job_s),
        "busy_fraction_of_2_workers": round(total_job_s / (2 * (end - start)), 3),
        "stages": per_stage,
        "repeats": {
            "job_time_min": minutes(repeat_s),
            "wall_equivalent_min_2_workers": minutes(repeat_s / 2),
            "share_of_job_time": round(repeat_s / total_job_s, 3),
        },
        "pruning": {
            "wall_min": minutes(prune_wall) if prune_wall is not None else None,
            "steps": steps,
            "control_finetunes": controls,
            "finetune_min": minutes(finetune_s),
            "control_finetune_min": minutes(control_s),
            # what a control beside every step would have cost on top (the mean control fine-tune per step)
            "control_every_step_extra_min": minutes((steps - controls) * control_s / controls) if controls else None,
            "layers": {
                r["stage"]: {
                    "architecture": r["result"].get("architecture"),
                    "steps_tried": r["result"].get("steps_tried"),
                    "steps_accepted": r["result"].get("steps_accepted"),
                    "stop_reason": r["result"].get("stop_reason"),
                    "test_accuracy": r["result"].get("test_accuracy"),
                    "total_drop": r["result"].get("total_drop"),
                    "control_converged_at_step": r["result"].get("control_converged_at_step"),
                    "job_min": minutes(r["job_s"]),
                }
                for r in prune
            },
        },
        "load_at_attempt_start": (
            {"median": loads[len(loads) // 2], "max": loads[-1], "attempts": len(loads)} if loads else None
        ),
        "interrupted_jobs": sum(1 for r in rows if (r["interruptions"] or 0) > 0),
        "must_show": must_show(rows),
    }


def must_show(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "done":
            by_stage[r["stage"]].append(r)
    out: dict[str, Any] = {}
    base = by_stage.get("baseline", [])
    if base:
        acc = float(base[0]["result"]["test_accuracy"])
        out["baseline_test_accuracy"] = acc
        out["baseline_within_1pt_of_seed"] = abs(acc - SEED_TEST_ACCURACY) <= 0.01
    # the training grid's architecture against the model grid's best mean test accuracy (3 seeds)
    model = by_stage.get("model_search", []) + by_stage.get("model_repeats", [])
    arch_keys = ("conv1", "conv2", "dense")
    accs: dict[str, list[float]] = defaultdict(list)
    for r in model:
        p = r["resolved_params"] or r["params"]
        accs[json.dumps({k: p.get(k) for k in arch_keys}, sort_keys=True)].append(float(r["result"]["test_accuracy"]))
    full = {k: sum(v) / len(v) for k, v in accs.items() if len(v) >= 3}
    train = by_stage.get("train_search", [])
    if full and train:
        best = max(full, key=lambda k: full[k])
        p = train[0]["resolved_params"] or train[0]["params"]
        used = json.dumps({k: p.get(k) for k in arch_keys}, sort_keys=True)
        out["train_grid_architecture"] = json.loads(used)
        out["model_grid_best_mean"] = {"architecture": json.loads(best), "mean_test_accuracy": round(full[best], 5)}
        out["train_grid_uses_best_mean_architecture"] = used == best
    seeds: Counter[str] = Counter()
    for name in ("model_search", "model_repeats", "train_search", "train_repeats"):
        for r in by_stage.get(name, []):
            seeds[config_key(r["resolved_params"] or r["params"])] += 1
    out["configs_with_3_or_more_seeds"] = sum(1 for n in seeds.values() if n >= 3)
    prune = [r for s, rs in by_stage.items() if s.startswith("prune_") for r in rs]
    # the assignment's rule alone (item 15): a step's pruning drop over 1 point; no cumulative limit, no step cap
    out["every_layer_stopped_by_the_rule"] = bool(prune) and all(
        "max_step_drop" in (reason := r["result"].get("stop_reason") or "")
        and not any(w in reason for w in ("max_total_drop", "max_steps", "cumulative"))
        for r in prune
    )
    bench = by_stage.get("benchmark", [])
    timing = (bench[0]["result"] or {}).get("timing", {}) if bench else {}
    out["original_nn_median_s"] = timing.get("original_nn_median_s")
    out["matmul_over_nn"] = timing.get("matmul_over_nn")
    out["matmul_over_original_nn"] = timing.get("matmul_over_original_nn")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=Path("state"), help="the run's state directory (queue.db)")
    ap.add_argument("--sweep", default="fmnist-assignment")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/assignment_run.json"))
    args = ap.parse_args()
    summary = {"sweep": args.sweep, **summarize(*load(args.state, args.sweep))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
