"""The parts of the assignment report around the answers: how the sweep was run, our figures beside
the submitted report's, the bonus items, and the references (assignment instruction 5: "clearly
state any such collaboration or references in the report")."""

from __future__ import annotations

from typing import Any

from jobs.kinds.benchmark_result import BenchmarkResult
from jobs.report.md import pct, section, table
from jobs.report.roles import Roles
from jobs.report.stats import number

# The submitted report of the same assignment (../shared/seeds/000 and 003), on Google Colab's CPU.
SEED_FIGURES = {
    "baseline": 0.8834,  # Step 1 network, trained to 90% train accuracy: test accuracy
    "model_grid": 0.8915,  # best test accuracy of the 72-configuration model grid
    "train_grid": 0.8958,  # best test accuracy of the 48-configuration training grid
    "fastest_s": 305.0,  # the model grid's fastest time to 90% train accuracy
    "matmul_over_nn": 2.99 / 1.62,  # matmul-only inference time / nn modules (1.85x)
}

COMMANDS = (
    "sweeper enqueue jobs/grids/assignment.yaml   # every configuration becomes a job\n"
    "sweeper work --wait                          # one worker per core; resumable\n"
    "sweeper report --out report --mlflow-screenshot --pdf"
)

REFERENCES = [
    "CS 6886 Systems Engineering for Deep Learning, Assignment 3, “Getting into the Flow of Deep Learning” "
    "(the specification this report answers; its words are quoted where we interpret them).",
    "H. Xiao, K. Rasul, R. Vollgraf, “Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning "
    "Algorithms”, arXiv:1708.07747, 2017 (the data: 60,000 training and 10,000 test images).",
    "A. Paszke et al., “PyTorch: An Imperative Style, High-Performance Deep Learning Library”, NeurIPS 2019 "
    "(all training, pruning and timing; models saved with torch.save of the state dict).",
    "M. Zaharia et al., “Accelerating the Machine Learning Lifecycle with MLflow”, IEEE Data Eng. Bull. 41(4), "
    "2018 (every run, its parameters, metrics and the pruning steps are MLflow runs).",
    "FLOPs convention: per output value, n·k² multiplications, n·k² − 1 additions and one bias addition, so "
    "FLOPs = 2 × multiply-accumulates, the convention of PyTorch's torch.utils.flop_counter and of P. Molchanov "
    "et al., “Pruning Convolutional Neural Networks for Resource Efficient Inference”, ICLR 2017; ReLU and "
    "max-pooling are not counted. The formula is worked out in item 18.",
    "B. L. Welch, “The generalization of ‘Student's’ problem when several different population variances are "
    "involved”, Biometrika 34, 1947 (the t test behind every “within / beyond noise”); S. Holm, “A simple "
    "sequentially rejective multiple test procedure”, Scand. J. Statistics 6, 1979.",
    "E. B. Wilson, “Probable inference, the law of succession, and statistical inference”, JASA 22, 1927 (the "
    "accuracy intervals).",
    "X. Glorot, Y. Bengio, “Understanding the difficulty of training deep feedforward neural networks”, AISTATS "
    "2010 (Xavier initialisation); K. He et al., “Delving Deep into Rectifiers”, ICCV 2015 (Kaiming).",
]


def _jobs(view: Any, stages: list[str]) -> list[Any]:
    return [j for s in stages for j in view.jobs(s)]


def _best(jobs: list[Any]) -> float | None:
    values = [v for j in jobs if (v := number(j.result.get("test_accuracy"))) is not None]
    return max(values) if values else None


def _benchmark(view: Any, roles: Roles) -> BenchmarkResult | None:
    jobs = _jobs(view, roles.benchmark)
    if not jobs:
        return None
    try:
        return BenchmarkResult.read(jobs[-1].result)
    except ValueError:
        return None


def attempt_loads(view: Any) -> list[float]:
    """The 1-minute load average each attempt recorded as it started (its provenance), sorted."""
    return sorted(v for p in view.attempt_provenance().values() if (v := number(p.get("load_1m"))) is not None)


def load_text(view: Any) -> str:
    """How loaded the machine was, in words."""
    loads = attempt_loads(view)
    why = "that is why training time is compared in images to the target (deterministic) and not only in seconds."
    if not loads:
        return "The machine's load during the run was not recorded; other load may have slowed some runs, and " + why
    median = loads[len(loads) // 2]
    p90 = loads[min(len(loads) - 1, int(0.9 * len(loads)))]
    return (
        f"The machine's 1-minute load average as each run started ({len(loads)} starts, resumes included): "
        f"median {median:.1f}, "
        f"90th percentile {p90:.1f}, highest {loads[-1]:.1f} (a load equal to the number of workers is the "
        "workers alone; more means other processes shared the cores and slowed the runs in seconds). Seconds "
        "therefore carry the load with them; " + why
    )


def how_run(view: Any, roles: Roles) -> dict[str, Any]:
    jobs = view.jobs()
    starts = [j.started_at for j in jobs if j.started_at is not None]
    ends = [j.finished_at for j in jobs if j.finished_at is not None]
    wall = (max(ends) - min(starts)) if starts and ends else None
    compute = sum(d for j in jobs if (d := j.duration_s) is not None)
    bench = _benchmark(view, roles)
    timing = bench.timing if bench is not None else None
    hardware = (
        f"Hardware: {timing.cpu or 'a CPU the benchmark did not name'}; PyTorch {timing.torch or '?'}. "
        if timing is not None
        else "The sweep has no benchmark job, which is where the processor is recorded. "
    )
    lines = [
        hardware + "Training used the CPU only, as item 7 requires (no GPU), with one PyTorch thread per worker "
        "process and one worker per core: for these small networks that is faster than several threads in one "
        "process. " + load_text(view),
        f"{len(jobs)} runs finished"
        + (f" in {wall / 3600:.1f} hours of wall time" if wall is not None else "")
        + f" ({compute / 3600:.1f} hours of compute added over the runs, which ran in parallel). The commands:",
        "```\n" + COMMANDS + "\n```",
        "Interrupted runs (a closed session, a killed worker) resume from their last checkpoint and give the "
        "same numbers as an uninterrupted run. The “running 90 %” train accuracy used throughout is the accuracy "
        "over the last 10,000 training images seen during training (a sliding window, as the assignment's "
        "“first reach 90 % train accuracy” is measured while training); the train accuracy in the tables is "
        "measured afterwards over the whole training set, which is why it can read a little below 90 %.",
    ]
    if timing is not None and timing.threads:
        lines.insert(1, f"Inference was timed with {timing.threads} thread(s) at batch {timing.batch_size}.")
    return section("How this was run", lines, level=2)


def beside_seed(view: Any, roles: Roles) -> dict[str, Any] | None:
    base = roles.baseline
    rows = []
    if base is not None:
        rows.append(
            ["Step 1 network, test accuracy", pct(SEED_FIGURES["baseline"]), pct(base.result.get("test_accuracy"))]
        )
    if roles.model_grid is not None:
        rows.append(["best of the model grid, test accuracy", pct(SEED_FIGURES["model_grid"]),
                     pct(_best(roles.model_grid.all_jobs))])  # fmt: skip
        times = [v for j in roles.model_grid.jobs if (v := number(j.result.get("time_to_target_s"))) is not None]
        rows.append(["model grid, fastest time to 90 % train accuracy", f"{SEED_FIGURES['fastest_s']:.0f} s",
                     f"{min(times):.0f} s" if times else "-"])  # fmt: skip
    if roles.train_grid is not None:
        rows.append(["best of the training grid, test accuracy", pct(SEED_FIGURES["train_grid"]),
                     pct(_best(roles.train_grid.all_jobs))])  # fmt: skip
    bench = _benchmark(view, roles)
    if bench is not None:
        ratio = bench.timing.matmul_over_original_nn or bench.timing.matmul_over_nn
        rows.append(["matmul-only inference time ÷ nn modules", f"{SEED_FIGURES['matmul_over_nn']:.2f}×",
                     f"{ratio:.2f}×" if ratio else "-"])  # fmt: skip
    if not rows:
        return None
    return section(
        "Our figures beside the submitted report's",
        [
            "The submitted report of the same assignment (on a Google Colab CPU) against this sweep. Times depend "
            "on the machine and its load; the best-of-grid accuracies are single best runs, which favour whoever "
            "ran more configurations or seeds (the winner's curse, see Step 2).",
            table(["figure", "submitted report", "this report"], rows, "lrr"),
        ],
        level=2,
    )


def bonus(view: Any, roles: Roles) -> dict[str, Any]:
    bench = _benchmark(view, roles)
    gpu = bench.timing.cuda_device if bench is not None else None
    items = [
        "**9. Google Facets (bonus): not attempted.** Facets is an interactive notebook widget; a PDF can only hold "
        "a picture of it. Its purpose, seeing where the model fails, is served by the Step 1 model's per-class "
        "accuracy and confusion matrix in section 9 above.",
        (
            f"**21. Matrix multiplication on a GPU (bonus): timed** on {gpu}; the figures are in item 20."
            if gpu
            else "**21. Matrix multiplication on a GPU (bonus): not attempted in this run**: the machine had no GPU. "
            "The benchmark times the same code on CUDA whenever a GPU is present, so a run on a GPU machine "
            "answers it."
        ),
        "**22. A catch-22 puzzle (bonus).** To know which configuration generalises best you must measure it on "
        "data it was not chosen on; but the moment you choose the best configuration by its test accuracy, the "
        "test set is data it was chosen on. So the more configurations you try to find the best one, the less "
        "you can trust that it is the best. (Step 2's winner's curse is this puzzle in numbers.)",
    ]
    return section("Bonus items", items, level=2)


def references() -> dict[str, Any]:
    return section("References", "\n".join(f"{i}. {r}" for i, r in enumerate(REFERENCES, 1)), level=2)


def about(view: Any, roles: Roles) -> tuple[list[dict[str, Any]], list[str]]:
    out = [how_run(view, roles)]
    seed = beside_seed(view, roles)
    if seed is not None:
        out.append(seed)
    out += [bonus(view, roles), references()]
    return out, []
