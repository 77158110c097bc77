"""Step 2 of the assignment, questions 12a-12c, and how much of the differences is noise.

Configurations are ranked by their mean test accuracy over seeds (a configuration that ran once
has a mean of one value). Speed is ranked by images to the 90% target, which does not depend on
machine load; compute seconds are shown beside it.
"""

from __future__ import annotations

import math
from typing import Any

from jobs.report.md import (
    ARCH_KEYS,
    arch_text,
    cell,
    config_text,
    count,
    details,
    mean_sd,
    pct,
    plain,
    seconds,
    section,
    slug,
    table,
)
from jobs.report.roles import Grid, Roles
from jobs.report.stats import (
    SEED_KEY,
    Config,
    Test,
    accuracy_se,
    group_configs,
    holm,
    marginal_effects,
    mean,
    number,
    welch,
)
from sweeper.plots import pyplot

TOP = 3
GRID_NAMES = {"model": "(a) model hyper-parameters", "train": "(b) training hyper-parameters"}

# A likely reason for a direction of effect, said only when the numbers point that way.
WHY = {
    (
        "dense",
        "up",
    ): "a larger hidden layer has more capacity to separate similar classes (shirts, T-shirts, pullovers)",
    ("dense", "down"): "a smaller hidden layer has fewer weights to fit before the 90% stop, and overfits less",
    ("conv1.channels", "up"): "more first-layer filters detect more kinds of edges and textures",
    ("conv1.channels", "down"): "fewer first-layer filters leave fewer weights to fit in the short training",
    ("conv2.channels", "up"): "more second-layer filters combine edges into more kinds of parts",
    ("conv2.channels", "down"): "fewer second-layer filters leave fewer weights to fit in the short training",
    ("conv1.kernel", "up"): "a wider first-layer filter sees larger shapes (collars, straps, soles) at once",
    ("conv1.kernel", "down"): "a small first-layer filter keeps fine detail and has fewer weights",
    ("conv2.kernel", "up"): "a wider second-layer filter covers more of the garment",
    ("conv2.kernel", "down"): "a small second-layer filter keeps fine detail and has fewer weights",
    ("lr", "up"): "a larger step makes more progress per image, so training ends in a better place",
    ("lr", "down"): "a smaller step is more stable near the minimum",
    ("momentum", "up"): "momentum averages gradients over more steps and speeds progress along consistent directions",
    ("momentum", "down"): "less momentum overshoots less",
    ("batch_size", "down"): "smaller batches make more (noisier) updates per epoch, and the noise regularises",
    ("batch_size", "up"): "larger batches give less noisy gradients per update",
}


def grid_title(roles: Roles, grid: Grid) -> str:
    return GRID_NAMES["model" if grid is roles.model_grid else "train"]


def _flat(job: Any) -> dict[str, Any]:
    return job.flat_params()


def _gap(config: Config) -> float | None:
    train, test = config.mean_of("train_accuracy"), config.mean
    return None if train is None or test is None else train - test


def ranked(jobs: list[Any]) -> list[Config]:
    """Configurations best first; when some ran with more seeds (the repeated top ones), those rank first.

    A configuration that ran once must not beat one measured over several seeds on one lucky run
    (the same rule as the grid's `min_seeds`), so the top of the table is the selection's choice.
    """
    configs = group_configs(jobs)
    most = max((c.n for c in configs), default=0)
    return sorted(configs, key=lambda c: (c.n < most, c.mean is None, -(c.mean or 0.0), c.first.position))


def _noise_sd(n_test: int | None, p: float = 0.88) -> float:
    """The spread one run's test accuracy has from the test set alone (the stand-in for one seed)."""
    return accuracy_se(p, n_test or 10_000)


def _compare(a: Config, b: Config, n_test: int | None) -> Test:
    """Welch's t test of a's seeds against b's (a single run: the test-set error as its spread)."""
    return welch(a.values, b.values, _noise_sd(n_test, a.mean or 0.88))


def _noise_words(test: Test) -> str:
    verdict = "beyond noise" if test.beyond else "within noise: we cannot tell which is better"
    return f"{100 * test.gap:.2f} points ({test.words()}: {verdict})"


def winners_curse(configs: list[Config]) -> str | None:
    """How much of the repeated configurations' lead is the luck they were picked for: they were
    chosen by their first seed's result, and that seed is inside their means."""
    repeated = [c for c in configs if c.n > 1 and number(c.first.result.get("test_accuracy")) is not None]
    if not repeated:
        return None
    firsts, others, better = [], [], 0
    for c in repeated:
        first = number(c.first.result.get("test_accuracy"))
        rest = [v for j in c.jobs[1:] if (v := number(j.result.get("test_accuracy"))) is not None]
        if first is None or not rest:
            continue
        firsts.append(first)
        others.append(mean(rest))
        better += first > mean(rest)
    if not firsts:
        return None
    seed = cell(repeated[0].first.params.get(SEED_KEY))
    return (
        f"_The winner's curse._ The repeated configurations were picked for their seed-{seed} result, and that "
        f"run is inside their means: their seed-{seed} runs average {pct(mean(firsts))}, their other seeds "
        f"{pct(mean(others))} ({100 * (mean(firsts) - mean(others)):+.2f} points; the first seed is the better "
        f"in {better} of {len(firsts)}). The other seeds are the fairer estimate of how good a chosen "
        "configuration is: a 3-seed mean that includes the picked seed sits about a third of that gap above them."
    )


# ---------------------------------------------------------------------------------------------
# 12a


def top3(roles: Roles, grid: Grid, n_test: int | None) -> list[str]:
    T = roles.target_text
    configs = ranked(grid.all_jobs)
    if not configs:
        return [f"_{grid_title(roles, grid)}: no run of `{grid.stage}` has finished._"]
    top = configs[:TOP]
    rows = []
    for i, c in enumerate(top, 1):
        flat = _flat(c.first)
        speed = c.mean_of("images_to_target")
        rows.append(
            [
                f"#{i}",
                config_text(flat, grid.keys),
                str(c.n),
                mean_sd(c.mean, c.std, c.n),
                pct(c.mean_of("train_accuracy")),
                _points(_gap(c)),
                count(speed) if speed is not None else "never",
                ", ".join(f"`{j.id}`" for j in c.jobs),
            ]
        )
    most = max(c.n for c in configs)
    seeded = sum(1 for c in configs if c.n == most)
    seeds_note = (
        f" The {seeded} configurations that ran with {most} seeds rank first, by their mean; the others ran "
        "once and follow."
        if most > 1 and seeded < len(configs)
        else ""
    )
    parts = [
        f"**{grid_title(roles, grid)}**: {len(configs)} configurations, {len(grid.all_jobs)} runs.{seeds_note}",
        table(
            [
                "rank",
                "configuration",
                "seeds",
                "test accuracy",
                "train accuracy",
                "train − test (overfitting)",
                f"images to {T}",
                "runs",
            ],
            rows,
            "llrrrrrl",
        ),
    ]
    words = []
    if len(top) > 1:
        for other in top[1:]:
            words.append(f"#1 leads #{top.index(other) + 1} by {_noise_words(_compare(top[0], other, n_test))}")
    gaps = [(g, i) for i, c in enumerate(top, 1) if (g := _gap(c)) is not None]
    if gaps:
        least, rank = min(gaps)
        side = "above" if least >= 0 else "below"
        words.append(f"#{rank} overfits least (train accuracy {_points(abs(least))} {side} test)")
    if words:
        parts.append("; ".join(words) + ".")
    curse = winners_curse(top)
    if curse:
        parts.append(curse)
    return parts


def _points(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} pt"


def all_runs_table(roles: Roles, grid: Grid) -> str:
    """Every run of the grid and its repeats as the MLflow experiment overview lists them."""
    T = roles.target_text
    jobs = sorted(grid.all_jobs, key=lambda j: (-(number(j.result.get("test_accuracy")) or 0.0), j.position))
    keys = [*grid.keys, "seed"]
    rows = []
    for j in jobs:
        flat = _flat(j)
        r = j.result
        rows.append(
            [
                f"`{j.id}`",
                j.stage,
                seconds(j.duration_s, 0),
                *(cell(flat.get(k)) for k in keys),
                pct(r.get("test_accuracy")),
                pct(r.get("train_accuracy")),
                seconds(r.get("time_to_target_s")) if r.get("reached", True) else "never",
                _images(r),
            ]
        )
    header = ["run", "stage", "duration", *(plain(k) for k in keys), "test accuracy", "train accuracy",
              f"time to {T}", f"images to {T}"]  # fmt: skip
    return table(header, rows, "lll" + "l" * len(keys) + "rrrr")


def _images(result: dict[str, Any]) -> str:
    if result.get("reached") is False:
        return "never"
    if result.get("images_to_target") is not None:
        return count(result["images_to_target"])
    return "-"


def q12a(view: Any, roles: Roles, n_test: int | None) -> dict[str, Any]:
    parts = [
        "The best configurations by test accuracy (the mean over seeds where a configuration ran with "
        "several), with the gap between train and test accuracy as the measure of overfitting: a "
        "smaller gap overfits less.",
    ]
    for grid in roles.grids:
        if grid is roles.train_grid and roles.model_grid is not None and grid.jobs:
            parts.append(_inherited(roles, grid))
        parts += top3(roles, grid, n_test)
    for grid in (g for g in roles.grids if g.all_jobs):  # an unfinished stage has no table to fold
        parts.append(
            details(
                f"All {len(grid.all_jobs)} runs of {grid_title(roles, grid)}, as the MLflow experiment overview "
                "lists them (sorted by test accuracy)",
                all_runs_table(roles, grid),
            )
        )
    shots = getattr(view, "mlflow_stage_screenshots", None) or {}
    figures = []
    for grid in roles.grids:
        for stage in (grid.stage, *grid.repeats):
            if stage in shots:
                parts.append(
                    f"{grid_title(roles, grid).capitalize()}, stage {stage}, in the MLflow UI: its runs table with "
                    f"the hyper-parameters as columns, sorted by test accuracy (best first).\n\n"
                    f"![MLflow runs table of {stage}]({shots[stage]})"
                )
                figures.append(shots[stage])
    shot = getattr(view, "mlflow_screenshot", None)
    if shot and not figures:
        parts.append(f"The same runs in the MLflow UI (its runs table, newest first):\n\n![MLflow runs table]({shot})")
        figures.append(shot)
    return section("12a. The top 3 configurations and all runs", parts, figures=figures)


def _inherited(roles: Roles, grid: Grid) -> str:
    """Which architecture the training grid ran on, and where it ranked in (a)."""
    assert roles.model_grid is not None
    flat = _flat(grid.jobs[0])
    arch = arch_text(flat)
    configs = ranked(roles.model_grid.all_jobs)
    rank = next(
        (i for i, c in enumerate(configs, 1) if all(_flat(c.first).get(k) == flat.get(k) for k in ARCH_KEYS)), None
    )
    if rank is None:
        return f"The training grid ran on {arch}, which is not one of the architectures of (a)."
    c = configs[rank - 1]
    return (
        f"The training grid (b) ran on {arch}: rank {rank} of {len(configs)} in (a) by mean test accuracy "
        f"({mean_sd(c.mean, c.std, c.n)} over {c.n} seed(s))."
    )


# ---------------------------------------------------------------------------------------------
# 12b


def q12b(view: Any, roles: Roles, n_test: int | None) -> dict[str, Any]:
    parts = [
        "For each hyper-parameter, the test accuracy of every run of the grid that used each value "
        "(mean, standard deviation, lowest and highest). In a full grid every value is combined with the "
        "same settings of the others, so the means compare like with like. The best value's runs are compared "
        "with the worst value's by Welch's t test (its degrees of freedom and p-value are given); since one "
        "table tests every hyper-parameter at once, a gap counts as beyond noise only when it survives Holm's "
        "correction for that many comparisons (family-wise 5%). The runs of one value also differ in the other "
        "hyper-parameters, which widens their spread, so the test is conservative. Each hyper-parameter gets "
        "a likely reason whichever way it went, and its effect on the training time (images to the target, "
        "which does not depend on machine load) beside its effect on accuracy.",
        "_The stop-at-target confound._ Every run stops when its running train accuracy first reaches the "
        "target, so a setting that learns faster also trains for fewer epochs: its test accuracy is measured "
        "earlier in training. A setting that speeds training (a larger learning rate, a larger initial "
        "scale) can therefore look worse on accuracy, and one that slows it can look better, for that reason "
        "alone.",
    ]
    figures = []
    for grid in roles.grids:
        rows_in = [(_flat(j), v) for j in grid.jobs if (v := number(j.result.get("test_accuracy"))) is not None]
        effects, tied = _untangle(marginal_effects(rows_in, grid.keys))
        if not effects:
            parts.append(f"_{grid_title(roles, grid)}: no hyper-parameter varies across finished runs._")
            continue
        rows = []
        for e in effects:
            for m in e.levels:
                rows.append(
                    [plain(e.key), cell(m.value), str(len(m.values)), pct(m.mean), _points(m.std),
                     pct(min(m.values)), pct(max(m.values))]
                )  # fmt: skip
        parts.append(f"**{grid_title(roles, grid)}** ({len(rows_in)} runs)")
        parts.append(
            table(
                ["hyper-parameter", "value", "runs", "mean test accuracy", "std", "lowest", "highest"], rows, "llrrrrr"
            )
        )
        fallback = _noise_sd(n_test)
        tests = [e.test(fallback) for e in effects]
        kept = holm([t.p for t in tests])
        speed = _speed_effects(grid)
        sentences = []
        for e, test, beyond in zip(effects, tests, kept, strict=True):
            best, worst = e.best, e.worst
            s = (
                f"**{plain(e.key)}**: {cell(best.value)} averages {pct(best.mean)} over {len(best.values)} runs "
                f"against {pct(worst.mean)} for {cell(worst.value)}, a gap of {100 * e.gap:.2f} points "
                f"({test.words()}; {'beyond noise after' if beyond else 'within noise under'} Holm's correction "
                f"for {len(tests)} comparisons)."
            )
            reason = _reason(e.key, best.value, worst.value)
            if beyond:
                s += f" A likely reason: {reason}."
            else:
                s += f" We cannot tell these values apart; had the difference been real, a likely reason: {reason}."
            if e.key in speed:
                s += " " + speed[e.key]
            sentences.append(s)
        for key, other in tied:
            sentences.append(f"{plain(key)} changes together with {plain(other)} in this grid: its effect is theirs.")
        ranking = ", ".join(plain(e.key) for e in effects)
        parts.append(f"Strongest effect first ({ranking}):\n\n" + "\n".join(f"- {s}" for s in sentences))
        name = f"marginal_{slug(grid.stage)}.png"
        _plot_marginals(view.figure_path(name), effects, grid_title(roles, grid))
        figures.append(name)
        parts.append(f"![mean test accuracy per value]({name})")
    return section("12b. Why some hyper-parameters performed well", parts, figures)


def _untangle(effects: list[Any]) -> tuple[list[Any], list[tuple[str, str]]]:
    """Effects of keys that split the runs the same way as a stronger key (a tied group such as
    lr and momentum set in pairs) are one effect: keep the first, name the others."""
    kept: list[Any] = []
    tied: list[tuple[str, str]] = []
    seen: dict[tuple[Any, ...], str] = {}
    for e in effects:
        shape = tuple(sorted(tuple(m.rows) for m in e.levels))
        if shape in seen:
            tied.append((e.key, seen[shape]))
        else:
            seen[shape] = e.key
            kept.append(e)
    return kept, tied


# Reasons for hyper-parameters whose values have no up or down (initialisations).
WHY_KEY = {
    "init": (
        "the initialisations set the starting scale of the weights: kaiming (He) is scaled for ReLU by the fan-in "
        "alone, so its weights start larger than xavier's (scaled by fan-in and fan-out) and the network learns "
        "faster at first; with the stop at the target, faster means fewer epochs, so part of any accuracy gap "
        "is when the run stopped"
    ),
}


def _reason(key: str, best: Any, worst: Any) -> str:
    direction = _direction(best, worst)
    reason = WHY.get((key, direction)) if direction else None
    if reason is None:
        reason = WHY_KEY.get(key.split(".")[-1]) or WHY_KEY.get(key)
    return reason or f"{plain(key)} {cell(best)} suited this network and data better than {cell(worst)}"


def _speed_effects(grid: Grid) -> dict[str, str]:
    """For each hyper-parameter, a sentence on its effect on images to the target (mean per value;
    runs that never reached the target are counted apart, not averaged in)."""
    out = {}
    for key in grid.keys:
        levels: dict[str, tuple[Any, list[float], int]] = {}
        for j in grid.jobs:
            value = _flat(j).get(key)
            _, images, never = levels.setdefault(cell(value), (value, [], 0))
            v = number(j.result.get("images_to_target"))
            if j.result.get("reached", True) is False or v is None:
                levels[cell(value)] = (value, images, never + 1)
            else:
                images.append(v)
        if len(levels) < 2:
            continue
        words = []
        for value, images, never in levels.values():
            text = f"{cell(value)}: {count(round(mean(images)))} images on average" if images else f"{cell(value)}: -"
            if never:
                text += f" ({never} run(s) never reached it)"
            words.append(text)
        reached = [(mean(images), value) for value, images, _ in levels.values() if images]
        ratio = ""
        if len(reached) >= 2 and min(reached)[0] > 0:
            (fast, fv), (slow, sv) = min(reached, key=lambda x: x[0]), max(reached, key=lambda x: x[0])
            ratio = f"; {cell(sv)} needs {slow / fast:.2f}× the images of {cell(fv)}"
        out[key] = "Time to the target, per value: " + "; ".join(words) + ratio + "."
    return out


def _direction(best: Any, worst: Any) -> str | None:
    if isinstance(best, (int, float)) and isinstance(worst, (int, float)) and best != worst:
        return "up" if best > worst else "down"
    return None


def _plot_marginals(path: Any, effects: list[Any], title: str) -> None:
    plt = pyplot()
    n = len(effects)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax, e in zip(axes.flat, effects, strict=False):
        xs = list(range(len(e.levels)))
        ax.errorbar(
            xs,
            [100 * m.mean for m in e.levels],
            yerr=[100 * (m.std or 0.0) for m in e.levels],
            fmt="o",
            capsize=4,
        )
        ax.set_xticks(xs, [cell(m.value) for m in e.levels], fontsize=7)
        ax.set_title(plain(e.key), fontsize=9)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{title}: mean ± std of test accuracy per value", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# 12c


def q12c(view: Any, roles: Roles) -> dict[str, Any]:
    T = roles.target_text
    jobs = [j for g in roles.grids for j in g.all_jobs if number(j.result.get("test_accuracy")) is not None]
    reached = [j for j in jobs if j.result.get("reached") is not False and number(j.result.get("time_to_target_s"))]
    never = [j for j in jobs if j not in reached]
    parts = [
        f"Test accuracy against training time to first reach {T} train accuracy, for every run of both grids "
        f"(repeats included). Runs that never reached {T} are drawn as crosses at their whole training time "
        "(they stopped at the epoch limit), not left out. The red line is the Pareto front: no other run is "
        "both faster and more accurate."
    ]
    name = "pareto_training_time.png"
    front = _plot_pareto(view.figure_path(name), roles, reached, never)
    parts.append(f"![Pareto plot of test accuracy against training time]({name})")
    if front:
        rows = [[f"`{j.id}`", j.stage, _desc(roles, j), pct(j.result.get("test_accuracy")),
                 seconds(j.result.get("time_to_target_s")), _images(j.result)] for j in front]  # fmt: skip
        parts.append(
            "**The Pareto front**\n\n"
            + table(
                ["run", "stage", "configuration", "test accuracy", f"time to {T}", f"images to {T}"], rows, "lllrrr"
            )
        )
    if never:
        rows = [
            [f"`{j.id}`", j.stage, _desc(roles, j), pct(j.result.get("test_accuracy")),
             f"never reached {T} (stopped after {cell(number(j.result.get('epochs')))} epochs, "
             f"running train accuracy {pct(j.result.get('train_running_accuracy'))})"]
            for j in never
        ]  # fmt: skip
        parts.append(
            f"**Never reached {T} train accuracy** ({len(never)} run(s), the crosses)\n\n"
            + table(["run", "stage", "configuration", "test accuracy", "outcome"], rows, "lllrl")
        )
    speed = sorted(reached, key=lambda j: (_speed_key(j), j.position))[:5]
    if speed:
        rows = [
            [f"#{i}", f"`{j.id}`", j.stage, _desc(roles, j), _images(j.result),
             seconds(j.result.get("time_to_target_s")), pct(j.result.get("test_accuracy"))]
            for i, j in enumerate(speed, 1)
        ]  # fmt: skip
        parts.append(
            f"**Fastest to {T}**, ranked by training images seen until the running train accuracy first reached "
            f"{T}: a count that does not depend on how busy the machine was. The compute seconds beside it "
            "do.\n\n"
            + table(
                ["rank", "run", "stage", "configuration", f"images to {T}", "compute time", "test accuracy"],
                rows,
                "llllrrr",
            )
        )
        if any(j.result.get("images_to_target") is None for j in speed):
            parts.append("_Some runs did not record images to target; they are ranked by their time instead._")
    return section("12c. Pareto plot of test accuracy against training time", parts, [name])


def _speed_key(job: Any) -> float:
    images = number(job.result.get("images_to_target"))
    return images if images is not None else float("inf")


def _desc(roles: Roles, job: Any) -> str:
    grid = next((g for g in roles.grids if job.stage in g.stages), None)
    return config_text(_flat(job), grid.keys if grid else []) + f", seed {cell(job.params.get('seed'))}"


def _plot_pareto(path: Any, roles: Roles, reached: list[Any], never: list[Any]) -> list[Any]:
    T = roles.target_text
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, grid in enumerate(roles.grids):
        mine = [j for j in reached if j.stage in grid.stages]
        ax.scatter(
            [j.result["time_to_target_s"] for j in mine],
            [100 * j.result["test_accuracy"] for j in mine],
            s=22,
            alpha=0.7,
            color=f"C{i}",
            label=f"{grid_title(roles, grid)} ({len(mine)})",
        )
    if never:
        ax.scatter(
            [number(j.result.get("total_train_s")) or 0.0 for j in never],
            [100 * j.result["test_accuracy"] for j in never],
            marker="x",
            s=50,
            color="black",
            label=f"never reached {T} ({len(never)}), at full training time",
        )
    pts = sorted(reached, key=lambda j: (j.result["time_to_target_s"], -j.result["test_accuracy"], j.position))
    front, best = [], -1.0
    for j in pts:
        if j.result["test_accuracy"] > best:
            front.append(j)
            best = j.result["test_accuracy"]
    if front:
        ax.plot(
            [j.result["time_to_target_s"] for j in front],
            [100 * j.result["test_accuracy"] for j in front],
            "-",
            drawstyle="steps-post",
            color="tab:red",
            lw=1,
            label="Pareto front",
        )
    ax.set_xlabel(f"training time to {T} train accuracy (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Step 2: test accuracy against training time", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)
    return front


# ---------------------------------------------------------------------------------------------
# Seeds and noise


def noise(roles: Roles, n_test: int | None) -> dict[str, Any]:
    se = accuracy_se(0.88, n_test or 10_000)
    parts = [
        f"A test accuracy measured on {n_test or 10_000:,} test images has a standard error of about "
        f"{100 * se:.2f} points from the choice of test images alone (sqrt(p(1 − p)/n) at p = 88%). A run "
        "repeated with another seed (another initialisation and batch order) moves by more than that."
    ]
    rows = []
    for grid in roles.grids:
        configs = ranked(grid.all_jobs)
        repeated = [c for c in configs if c.n > 1]
        if not repeated:
            continue
        best = configs[0]
        for c in repeated:
            sem = (c.std or 0.0) / math.sqrt(c.n)
            versus = "-" if c is best else _noise_words(_compare(best, c, n_test))
            rows.append(
                [
                    grid_title(roles, grid),
                    config_text(_flat(c.first), grid.keys),
                    ", ".join(cell(s) for s in c.seeds),
                    ", ".join(pct(v) for v in c.values),
                    mean_sd(c.mean, c.std, c.n),
                    _points(sem),
                    versus,
                ]
            )
    if not rows:
        parts.append(
            "_Every configuration ran with one seed, so differences below about "
            f"{2 * 100 * se * math.sqrt(2):.1f} points (2 standard errors of a difference of two single runs) "
            "cannot be told from noise._"
        )
        return section("How much of this is noise", parts)
    parts.append(
        "Configurations that ran with several seeds: mean ± standard deviation over seeds, the standard error "
        "of the mean, and the gap to the grid's best configuration, tested with Welch's t test (unequal spreads; "
        "with 3 seeds a side has only 2 degrees of freedom, so a gap needs t above about 4.3 to reach p < 0.05). "
        "Where p ≥ 0.05 we cannot tell the two apart: the ranking could flip with other seeds. Several "
        "comparisons are made here, one per row, so even at p < 0.05 one in twenty rows of pure noise would "
        "read as a difference."
    )
    parts.append(
        table(
            [
                "grid",
                "configuration",
                "seeds",
                "test accuracy per seed",
                "mean ± std",
                "std. error",
                "behind the best by",
            ],
            rows,
            "lllrrrl",
        )
    )
    return section("How much of this is noise", parts)
