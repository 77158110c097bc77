"""The assignment report (`fmnist` plug-in, jobs/report/sections.py) from a small but real assignment-shaped sweep.

Real Fashion-MNIST subsets, real workers, every stage kind of jobs/grids/assignment.yaml: a
baseline to the target and one for a fixed number of epochs, an architecture grid and a training
grid each with a seed-repeat stage, five failure-mode runs, three pruning stages and the benchmark.
The report's numbers are checked against the jobs' own results, read back from the queue.
"""

from __future__ import annotations

import csv
import math
import re
import shutil
from pathlib import Path

import pytest

from jobs.report.checks import GRIDS, MACHINE_PATH, STEP2, run_checks
from jobs.report.stats import Config, group_configs, marginal_effects, std, wilson
from sweeper.store.db import open_database
from sweeper.store.results import SweepView
from tests.conftest import FMNIST_DIR, run_cli
from tests.test_report import assert_png

GRID = """\
sweep: tiny-assignment
description: the assignment's Steps 1-4 on a small subset of Fashion-MNIST
defaults: {seed: 0, train_subset: 600, test_subset: 300, max_epochs: 2, log_every: 4, target_train_acc: 0.6,
           eval_batch_size: 300, lr: 0.01, momentum: 0.9, batch_size: 32,
           conv1: {channels: 4, kernel: 3}, conv2: {channels: 4, kernel: 3}, dense: 16}
stages:
  baseline:
    kind: train
  baseline_10_epochs:
    kind: train
    params: {stop_at_target: false}
  model_search:
    kind: train
    grid:
      dense: [16, 32]
  model_repeats:
    repeat: {stage: model_search, top: 2, by: test_accuracy, mode: max, seeds: [1]}
  diagnostics:
    kind: train
    params: {stop_at_target: false}
    configs:
      - {lr: 0.01}       # the reference: the baseline's settings on this stage's images and epochs
      - {train_subset: 200}   # the reference of the two runs below, on their images
      - {lr: 0.5}
      - {lr: 0.00001}
      - {momentum: 0.99}
      - {batch_size: 4, train_subset: 200}
      - {conv1: {channels: 16, kernel: 5}, conv2: {channels: 16, kernel: 5}, dense: 64, train_subset: 200}
  train_search:
    kind: train
    needs: [model_search, model_repeats]
    inherit: {from: [model_search, model_repeats], metric: test_accuracy, mode: max, over_seeds: mean,
              keys: [conv1, conv2, dense]}
    grid:
      optim: [{lr: 0.01, momentum: 0.9}, {lr: 0.00001, momentum: 0.5}]
  train_repeats:
    repeat: {stage: train_search, top: 1, by: test_accuracy, mode: max, seeds: [1]}
  prune_conv1:
    kind: prune
    needs: [model_search, model_repeats, train_search, train_repeats]
    params:
      model: {best_of: [model_search, model_repeats, train_search, train_repeats], metric: test_accuracy,
              mode: max}
      layer: conv1
      finetune_epochs: 1
      max_steps: 1
  prune_conv2:
    kind: prune
    needs: [prune_conv1]
    params: {model: {result_of: prune_conv1}, layer: conv2, finetune_epochs: 1, max_steps: 1}
  prune_fc1:
    kind: prune
    needs: [prune_conv2]
    params: {model: {result_of: prune_conv2}, layer: fc1, finetune_epochs: 1, max_steps: 1}
  benchmark:
    kind: benchmark
    needs: [baseline, prune_conv1, prune_conv2, prune_fc1]
    params: {models: {all_of: [prune_conv1, prune_conv2, prune_fc1]}, original: {result_of: baseline},
             min_test_accuracy: 0.3, timing_rounds: 1, gpu: false}
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[str, Path, dict]:
    fmnist_dir = FMNIST_DIR  # the fixture of that name is per test; this sweep is shared by the module's tests
    if not (fmnist_dir / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(
            f"real Fashion-MNIST not found in {fmnist_dir}: apt-get install dataset-fashion-mnist", pytrace=False
        )
    tmp = tmp_path_factory.mktemp("assignment")
    (tmp / "g.yaml").write_text(GRID)
    db = f"sqlite:///{tmp / 'state' / 'queue.db'}"
    state = str(tmp / "state")
    proc = run_cli("enqueue", "g.yaml", "--db", db, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "work", "--workers", "2", "--db", db, "--state", state, "--no-tracking", "--data-dir", str(fmnist_dir), cwd=tmp
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp / "rep"
    # --no-plots: the generic per-stage scatter plots (tested in test_report.py); the plug-in draws its own
    proc = run_cli("report", "--out", str(out), "--no-plots", "--db", db, "--state", state, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    database = open_database(db, create=False)
    try:
        view = SweepView(database, tmp / "state", "tiny-assignment")
        jobs = {s.name: view.jobs(s.name) for s in view.stages}
        failed = view.jobs(status="failed")
    finally:
        database.dispose()
    assert not failed, [(j.stage, j.error) for j in failed]
    return (out / "report.md").read_text(), out, jobs


def part(md: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = md.index(heading + "\n") if heading + "\n" in md else md.index(heading)
    rest = md[start + len(heading) :]
    # a bold lead-in ("**Never reached ...**") runs to the next one or the next heading
    m = re.search(rf"^#{{2,{level}}} " if level else r"^(#+ |\*\*)", rest, re.M)
    return rest[: m.start()] if m else rest


def pct(v: float) -> str:
    return f"{100 * v:.2f} %"


@pytest.mark.slow
def test_report_follows_the_assignment_steps_and_questions(report):
    md, out, jobs = report
    titles = [
        "## Step 1: the given network",
        "### 8. Loss during training",
        "### 8. Final train and test accuracy",
        "### 8. The saved model",
        "## Step 2: hyper-parameters",
        "### 12a. The top 3 configurations and all runs",
        "### 12b. Why some hyper-parameters performed well",
        "### 12c. Pareto plot of test accuracy against training time",
        "### How much of this is noise",
        "### 12d. Loss against epochs in five failure modes",
        "#### i. Learning rate too high",
        "#### ii. Learning rate too small",
        "#### iii. Momentum too high",
        "#### iv. Batch size too small",
        "#### v. Overfitting due to a large model",
        "## Step 3: pruning",
        "### 14-15. Layer conv1",
        "### 16. Layer conv2",
        "### 16. Layer fc1",
        "### 16. Layer fc2 (the output layer)",
        "## Step 4: a faster model",
        "### 18. FLOPs and the Pareto plot",
        "### 19. The selected model",
        "### 20. The model as matrix multiplications, and its speed",
        "## How this was run",
        "## Our figures beside the submitted report's",
        "## Bonus items",
        "## References",
        "## Appendix: every stage in detail",
    ]
    at = [md.index(t + "\n") for t in titles]
    assert at == sorted(at), "the Steps and questions come in the assignment's order, the stages after them"
    assert "## Not in this report" not in md  # every part had its stage
    for jargon in ("seed report", "3.3.a", "2.5.a"):
        assert jargon not in md
    assert "| Step 1 network, test accuracy | 88.34 % |" in md, "the submitted report's figures beside ours"
    assert "sweeper enqueue jobs/grids/assignment.yaml" in part(md, "## How this was run")
    assert "last 10,000 training images" in part(md, "## How this was run"), "the running 90 % is defined"
    load = re.search(
        r"load average as each run started \((\d+) starts, resumes included\): median ([\d.]+)",
        part(md, "## How this was run"),
    )
    assert load and int(load.group(1)) >= sum(map(len, jobs.values())), "every run's load, from its provenance"
    bonus = part(md, "## Bonus items")
    assert all(f"**{n}." in bonus for n in (9, 21, 22)) and "not attempted" in bonus
    references = part(md, "## References")
    assert all(word in references for word in ("Assignment 3", "PyTorch", "MLflow", "FLOPs convention"))
    # the raw stage-by-stage part is its own file, linked, not inside the graded document
    assert "[stages.md](stages.md)" in part(md, "## Appendix: every stage in detail")
    assert "## Stage `model_search`" not in md
    stages = (out / "stages.md").read_text()
    assert "## Stage `model_search`" in stages and "[report.md](report.md)" in stages


@pytest.mark.slow
def test_report_numbers_are_the_jobs_numbers(report):
    md, out, jobs = report
    base = jobs["baseline"][0]
    fixed = jobs["baseline_10_epochs"][0]
    step1 = part(md, "### 8. Final train and test accuracy")
    row = next(line for line in step1.splitlines() if line.startswith("| trained to 60% train accuracy |"))
    lo, hi = wilson(base.result["test_accuracy"], 300)
    assert pct(base.result["test_accuracy"]) in row and pct(base.result["train_accuracy"]) in row
    assert f"{100 * lo:.2f} to {100 * hi:.2f} %" in row
    assert "| trained a fixed 2 epochs |" in step1 and pct(fixed.result["test_accuracy"]) in step1
    assert "[step1_model.pt](step1_model.pt)" in md
    import torch

    blob = torch.load(out / "step1_model.pt", weights_only=True)  # the real model, loadable as documented
    assert blob["arch"]["dense"] == 16 and "fc1.weight" in str(list(blob["state_dict"]))

    # 12a: the best architecture by mean over its seeds, with every run id, and every run in the overview
    grid = [*jobs["model_search"], *jobs["model_repeats"]]
    best = group_configs(grid)[0]
    assert best.n == 2
    q12a = part(md, "### 12a. The top 3 configurations and all runs")
    top = next(line for line in q12a.splitlines() if line.startswith("| #1 | conv"))
    assert f"{100 * best.mean:.2f} ± {100 * best.std:.2f} %" in top
    assert all(f"`{j.id}`" in top for j in best.jobs)
    gap = best.mean_of("train_accuracy") - best.mean
    assert f"{100 * gap:.2f} pt" in top
    for j in [*grid, *jobs["train_search"], *jobs["train_repeats"]]:
        assert f"| `{j.id}` | {j.stage} |" in q12a

    # 12b: the marginal mean of each dense size over the grid's runs
    q12b = part(md, "### 12b. Why some hyper-parameters performed well")
    effects = marginal_effects([(j.flat_params(), j.result["test_accuracy"]) for j in jobs["model_search"]], ["dense"])
    for level in effects[0].levels:
        assert f"| hidden dense size | {level.value} | 1 | {pct(level.mean)} |" in q12b
    assert "**hidden dense size**" in q12b and "noise" in q12b
    assert "momentum changes together with learning rate" in q12b  # set in pairs: one effect, said once

    # 12c: the runs that never reached the target are in the plot's table, marked, not dropped
    q12c = part(md, "### 12c. Pareto plot of test accuracy against training time")
    never = [j for g in ("model_search", "train_search") for j in jobs[g] if j.result["reached"] is False]
    assert never, "the lr 1e-5 run of the training grid cannot reach 60% in 2 epochs"
    marked = part(q12c, "**Never reached 60% train accuracy**")
    for j in never:
        assert f"| `{j.id}` |" in marked and "never reached 60%" in marked
    fastest = min(
        (j for g in ("model_search", "model_repeats", "train_search", "train_repeats") for j in jobs[g]),
        key=lambda j: (j.result["images_to_target"] or math.inf, j.position),
    )
    first = next(line for line in q12c.splitlines() if line.startswith("| #1 |"))
    assert f"`{fastest.id}`" in first and f"{fastest.result['images_to_target']:,}" in first

    # seeds: mean ± std of every configuration that ran with two seeds, and Welch's t behind each verdict
    noise = part(md, "### How much of this is noise")
    for c in group_configs(grid):
        if c.n > 1:
            assert f"{100 * c.mean:.2f} ± {100 * std(c.values):.2f} %" in noise
    verdicts = re.findall(r"(beyond noise|within noise)", q12a + q12b + noise)
    tested = re.findall(
        r"Welch's t = -?\d+\.\d\d, (?:\d+\.\d degrees of freedom|normal curve), p [=<] ", q12a + q12b + noise
    )
    assert verdicts and len(tested) >= len(re.findall(r"beyond noise|within noise: we cannot tell", q12a + noise))
    assert "Holm's correction" in q12b and "The stop-at-target confound" in q12b
    assert "likely reason" in q12b and "Time to the target, per value:" in q12b
    assert "never reached it" in q12b, "the lr 1e-5 runs never reach the target: counted apart, not averaged"

    # 12d: each failure-mode run under its heading, with a verdict either way
    modes = {
        "#### i. Learning rate too high": {"lr": 0.5},
        "#### ii. Learning rate too small": {"lr": 1e-5},
        "#### iii. Momentum too high": {"momentum": 0.99},
        "#### iv. Batch size too small": {"batch_size": 4},
        "#### v. Overfitting due to a large model": {"dense": 64},
    }
    # each against the reference it differs from in one thing (the 200-image runs against the 200-image one)
    assert "each changing one setting against its reference (grey)" in md
    changed = {
        "#### i. Learning rate too high": "lr 0.5 (reference 0.01).",
        "#### ii. Learning rate too small": "lr 1e-05 (reference 0.01).",
        "#### iii. Momentum too high": "momentum 0.99 (reference 0.9).",
        "#### iv. Batch size too small": "batch_size 4 (reference 32).",
        "#### v. Overfitting due to a large model": "conv1.channels 16 (reference 4), conv1.kernel 5 (reference 3)",
    }
    for heading in modes:
        text = part(md, heading)
        assert f"Changed against its reference: {changed[heading]}" in text, text
        assert "train_subset" not in text.split("Changed against its reference:")[1].split("\n")[0]
        assert "**Shows it.**" in text or "**Does not show it.**" in text
    assert "over equal windows of images" in part(md, "#### iv. Batch size too small")
    lr_high = part(md, "#### i. Learning rate too high")
    assert "**Shows it.**" in lr_high  # lr 0.5 on this net diverges or ends clearly worse

    # Step 3: the triplets as the prune jobs recorded them, the stop reason, fc2 explained
    for stage, heading in (("prune_conv1", "### 14-15. Layer conv1"), ("prune_fc1", "### 16. Layer fc1")):
        prune = jobs[stage][0]
        text = part(md, heading)
        t = prune.result["triplets"][0]
        row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
        for key in ("before", "after_prune", "after_finetune"):
            assert pct(t[key]) in row
        assert f"{100 * t['drop']:+.2f} pt" in row
        assert "Stopped by" in text and "Cumulative drop from the unpruned model" in text
    assert "output layer" in part(md, "### 16. Layer fc2 (the output layer)")
    # Step 3 starts from the single most accurate model of Step 2 (item 13), with its configuration's seeds
    step2 = [j for g in ("model_search", "model_repeats", "train_search", "train_repeats") for j in jobs[g]]
    top = max(step2, key=lambda j: (j.result["test_accuracy"], -j.position))
    assert jobs["prune_conv1"][0].result["input_job"] == top.id
    step3 = part(md, "## Step 3: pruning")
    assert "Take the trained model which has the highest test accuracy in Step 2" in step3
    assert pct(top.result["test_accuracy"]) in step3
    assert "The difference between the first and last number is called the pruning drop" in step3
    assert "1 point of test accuracy" in step3
    assert "no cap on the number of steps" not in step3 and "This sweep also stopped a layer after 1 step(s)" in step3

    # Step 4: the formula worked out equals the benchmark's FLOPs; the timing is the benchmark's
    bench = jobs["benchmark"][0].result
    sel = bench["selected"]
    q18 = part(md, "### 18. FLOPs and the Pareto plot")
    assert f"**{sel['flops']:,}**" in q18 and "equal to the" in q18
    q19 = part(md, "### 19. The selected model")
    lo, hi = wilson(sel["test_accuracy"], bench["test_images"])
    assert f"**{sel['name']}**" in q19 and f"{100 * lo:.2f} to {100 * hi:.2f} %" in q19 and "Wilson" in q19
    rejected = any(
        t["step"] == sel["step"] and not t["accepted"] for j in jobs[sel["stage"]] for t in j.result["triplets"]
    )
    assert ("the step that broke that layer's stopping rule" in q19) == rejected
    q20 = part(md, "### 20. The model as matrix multiplications, and its speed")
    timing = bench["timing"]
    assert f"| selected model ({sel['name']}), nn modules | {timing['nn_median_s']:.3f} s |" in q20
    assert f"| selected model, matmul only | {timing['matmul_median_s']:.3f} s |" in q20
    # item 20: against the Step 1 network, timed with nn modules in the same run
    assert (
        f"| Step 1 network (conv 3x3x4, conv 3x3x4, dense 16), nn modules | {timing['original_nn_median_s']:.3f} s |"
        in q20
    )
    ratio = timing["matmul_median_s"] / timing["original_nn_median_s"]
    assert f"takes {ratio:.2f}× the time" in q20


@pytest.mark.slow
def test_the_graders_checks_pass_on_the_report_and_catch_each_fault(report, tmp_path):
    """jobs/report/checks.py, the must-show list of a handed-in report, on this sweep's real files; then
    on copies with one fault each, which it must catch."""
    _, out, jobs = report
    state = out.parent / "state"
    done = run_cli("export", "--csv", str(out / "jobs.csv"), "--state", str(state), cwd=out.parent)
    assert done.returncode == 0, done.stderr
    checks = {c.name: c for c in run_checks(out, STEP2, GRIDS)}
    for name in ("step3_starts_from_step2_best", "no_cumulative_limit", "noise_verdicts_tested",
                 "q12b_every_hyperparameter", "q12d_one_change_each", "no_machine_paths"):  # fmt: skip
        assert checks[name].ok, checks[name]
    best = max((j for s in STEP2 for j in jobs[s]), key=lambda j: j.result["test_accuracy"])
    assert best.id in checks["step3_starts_from_step2_best"].why
    # made without --pdf and --mlflow-screenshot (no tracking): both are missing, and said so
    assert not checks["pdf_with_figures"].ok and "no report.pdf" in checks["pdf_with_figures"].why
    assert not checks["mlflow_screenshots"].ok and "model_search" in checks["mlflow_screenshots"].why

    def broken(edit_md=None, edit_rows=None) -> dict[str, object]:
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(out, copy)
        if edit_md:
            (copy / "report.md").write_text(edit_md((copy / "report.md").read_text()))
        if edit_rows:
            with open(copy / "jobs.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            edit_rows(rows)
            with open(copy / "jobs.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        return {c.name: c.ok for c in run_checks(copy, STEP2, GRIDS)}

    def worst_input(rows):
        first = next(r for r in rows if r["stage"] == "prune_conv1")
        first["metrics.input_job"] = min((r for r in rows if r["stage"] in STEP2),
                                         key=lambda r: float(r["metrics.test_accuracy"]))["id"]  # fmt: skip

    def cumulative(rows):
        for r in rows:
            if r["kind"] == "prune":
                r["params.max_total_drop"] = "0.02"
                r["metrics.stop_reason"] = "step 3's cumulative drop 0.0241 > max_total_drop 0.02"

    assert broken(edit_rows=worst_input)["step3_starts_from_step2_best"] is False
    faults = broken(edit_rows=cumulative)
    assert faults["no_cumulative_limit"] is False and faults["stopped_by_the_rule"] is False
    two_se = "#1 leads #2 by 0.27 points (standard error of the difference 0.22 points: within noise)"
    assert broken(edit_md=lambda md: md + "\n" + two_se + "\n")["noise_verdicts_tested"] is False
    assert broken(edit_md=lambda md: md.replace("momentum", "m"))["q12b_every_hyperparameter"] is False
    assert broken(edit_md=lambda md: md + "\nsaved in /root/state/queue.db\n")["no_machine_paths"] is False


@pytest.mark.slow
def test_report_has_no_machine_paths_and_its_figures_are_real(report):
    md, out, _ = report
    for text in (md, (out / "stages.md").read_text()):
        assert not MACHINE_PATH.search(text), MACHINE_PATH.search(text)
        assert str(out.parent) not in text
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert len(figures) >= 10
    for name in figures:
        assert "/" not in name
        assert_png(out / name)


def test_wilson_interval_and_seed_statistics():
    lo, hi = wilson(0.5, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)  # the textbook value
    lo, hi = wilson(1.0, 10)
    assert hi == pytest.approx(1.0) and 0.72 < lo < 0.73  # 10/(10 + z²); inside [0, 1], unlike p ± 1.96·se
    assert std([1.0]) is None and std([1.0, 3.0]) == pytest.approx(math.sqrt(2))

    class Job:
        def __init__(self, pos: int, seed: int, acc: float, **params: object) -> None:
            self.position, self.params, self.result = pos, {"seed": seed, **params}, {"test_accuracy": acc}

    jobs = [Job(0, 0, 0.80, dense=16), Job(1, 0, 0.90, dense=32), Job(2, 1, 0.70, dense=16), Job(3, 1, 0.86, dense=32)]
    jobs.append(Job(4, 0, 0.10, dense=32))  # seed 0 of dense 32 again (another stage): counts once, as the first
    configs = group_configs(jobs)
    assert [c.first.params["dense"] for c in configs] == [32, 16]
    assert (
        isinstance(configs[0], Config) and configs[0].values == [0.90, 0.86] and configs[0].mean == pytest.approx(0.88)
    )


PARTIAL = """\
sweep: only-a-grid
defaults: {seed: 0, train_subset: 300, test_subset: 200, max_epochs: 1, log_every: 4, target_train_acc: 0.5,
           eval_batch_size: 200, conv1: {channels: 4, kernel: 3}, conv2: {channels: 4, kernel: 3}}
stages:
  model_search:
    kind: train
    grid:
      dense: [16, 32]
"""


@pytest.mark.slow
def test_a_sweep_with_only_a_grid_gets_its_questions_and_one_line_per_missing_part(tmp_path):
    (tmp_path / "g.yaml").write_text(PARTIAL)
    db = f"sqlite:///{tmp_path / 'state' / 'queue.db'}"
    state = str(tmp_path / "state")
    assert run_cli("enqueue", "g.yaml", "--db", db, cwd=tmp_path).returncode == 0
    proc = run_cli("work", "--db", db, "--state", state, "--no-tracking", "--data-dir", str(FMNIST_DIR), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("report", "--out", "rep", "--no-plots", "--db", db, "--state", state, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### 12a. The top 3 configurations and all runs" in md and "### 12b." in md and "### 12c." in md
    assert "## Step 1" not in md and "## Step 3" not in md and "## Step 4" not in md
    missing = part(md, "## Not in this report")
    for line in (
        "- Step 1: the sweep has no finished `baseline` train stage.",
        "- 12a-12c: the sweep has no training grid",
        "- Seeds: `model_search` has no seed-repeat stage",
        "- 12d: the sweep has no `diagnostics` train stage.",
        "- Step 3: the sweep has no `kind: prune` stage.",
        "- Step 4: the sweep has no `kind: benchmark` stage.",
    ):
        assert line in missing
    assert "could not be written" not in md  # every part degraded by itself, none crashed
    assert "Every configuration ran with one seed" in part(md, "### How much of this is noise")


def test_a_learning_rate_that_overflows_to_nan_is_shown_and_said(tmp_path):
    """history.json stores a NaN loss as null: the verdict names the overflow and the plot marks it."""
    from types import SimpleNamespace

    from jobs.report.curves import Curve, plot_failure
    from jobs.report.failures import first_nan, judge

    def history(losses: list[float | None], test_acc: float) -> dict:
        points = [{"step": 100 * (i + 1), "epoch": 0.5 * (i + 1), "loss": v} for i, v in enumerate(losses)]
        epochs = [{"epoch": e, "train_acc": test_acc, "test_acc": test_acc, "test_loss": None} for e in (1, 2)]
        return {"points": points, "epochs": epochs}

    run = Curve("this run", history([2.9, None, None, None], 0.10))
    ref = Curve("reference", history([1.3, 0.8, 0.6, 0.5], 0.83))
    assert first_nan(run) == 1.0 and first_nan(ref) is None
    job = lambda acc: SimpleNamespace(result={"test_accuracy": acc, "images_per_s": 4000.0}, params={})  # noqa: E731
    verdict = judge("lr_high", job(0.10), run, job(0.83), ref, 10_000)
    assert verdict.shows and "overflowed to NaN" in verdict.text and "by epoch 1.00" in verdict.text
    assert "stayed NaN" in verdict.text
    out = tmp_path / "lr_high.png"
    plot_failure(out, run, ref, "lr too high")
    assert_png(out)
