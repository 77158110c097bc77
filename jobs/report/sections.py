"""The Fashion-MNIST assignment's report, a `sweeper.report` plug-in: Steps 1-4, one part per question.

`sweeper report` calls `sections(view)` with a read-only view of the sweep (docs/reports.md "Report
plug-ins"). The sections follow the assignment (../shared/seeds/001): Step 1 (item 8), Step 2
(12a-12d and how much of the differences is noise), Step 3 (items 14-16) and Step 4 (items
18-20). They are marked `lead`, so they are report.md and the generic stage-by-stage part goes
to stages.md, linked from its appendix. checks.py checks a finished report the way a grader would.

Which stage answers which question is found by kind and content (jobs/report/roles.py); a part
whose stage is missing or unfinished is left out with a one-line note under "Not in this report".
A sweep with no train jobs is not this assignment: the plug-in then adds nothing.

    roles      stages -> baseline, grids (+ seed repeats), diagnostics, prune, benchmark
    stats      seeds, means, noise, Wilson intervals, marginal effects
    step1      Step 1          search     12a-12c, noise
    failures   12d             compress   Steps 3 and 4
    md, curves Markdown helpers; loss curves
    about      how this was run, the submitted report's figures, bonus items, references
    checks     the must-show list, from the handed-in files (python -m jobs.report.checks DIR)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobs.ml.classes import CLASSES
from jobs.ml.figures import plot_confusion
from jobs.report.about import about
from jobs.report.compress import step3, step4
from jobs.report.curves import Histories
from jobs.report.failures import q12d
from jobs.report.md import arch_text, pct, plain, section, table
from jobs.report.roles import Roles, find_roles
from jobs.report.search import grid_title, noise, q12a, q12b, q12c
from jobs.report.step1 import step1


def sections(view: Any) -> list[dict[str, Any]]:
    if not any(s.kind == "train" for s in view.stages):
        return []
    roles = find_roles(view)
    hist = Histories(view)
    notes: list[str] = []
    out: list[dict[str, Any]] = []

    def part(name: str, fn: Callable[[], tuple[list[dict[str, Any]], list[str]]]) -> None:
        try:
            made, why = fn()
        except Exception as exc:  # one part's bug (or odd data) must not cost the other Steps
            first = str(exc).splitlines()[0] if str(exc) else ""
            notes.append(f"{name}: could not be written ({type(exc).__name__}: {first}).")
            return
        out.extend(made)
        notes.extend(why)

    part("Step 1", lambda: step1(view, roles, hist))
    part("Step 1 confusion matrix", lambda: confusion(view, roles))
    part("Step 2", lambda: step2(view, roles, hist))
    part("Step 3", lambda: step3(view, roles))
    part("Step 4", lambda: step4(view, roles))
    part("How this was run, references", lambda: about(view, roles))
    if notes:
        out.append(section("Not in this report", "\n".join(f"- {n}" for n in notes), level=2))
    for s in out:
        s["lead"] = True
    return out


def step2(view: Any, roles: Roles, hist: Histories) -> tuple[list[dict[str, Any]], list[str]]:
    T = roles.target_text
    notes = []
    if roles.model_grid is None:
        notes.append("12a-12c: the sweep has no architecture grid (a train stage varying conv/dense sizes).")
    if roles.train_grid is None:
        notes.append("12a-12c: the sweep has no training grid (a train stage varying init, batch size, lr, momentum).")
    for grid in roles.grids:
        if not grid.repeats:
            notes.append(f"Seeds: `{grid.stage}` has no seed-repeat stage; its configurations ran with one seed.")
    out = []
    if roles.grids:
        n_test = hist.test_images(roles.baseline) if roles.baseline is not None else None
        lines = []
        for grid in roles.grids:
            seeds = (
                f", with {', '.join(f'`{r}`' for r in grid.repeats)} repeating the best with more seeds"
                if grid.repeats
                else ""
            )
            lines.append(
                f"- {grid_title(roles, grid)}: stage `{grid.stage}`, {len(grid.jobs)} runs varying "
                f"{', '.join(plain(k) for k in grid.keys) or 'nothing'}{seeds}."
            )
        intro = (
            f"Every run trains until its running train accuracy first reaches {T} (or an epoch limit), and logs its "
            "test accuracy and the time it took.\n\n" + "\n".join(lines)
        )
        out.append(section("Step 2: hyper-parameters", intro, level=2))
        out.append(q12a(view, roles, n_test))
        out.append(q12b(view, roles, n_test))
        out.append(q12c(view, roles))
        out.append(noise(roles, n_test))
    made, why = q12d(view, roles, hist)
    if made and not roles.grids:
        out.append(section("Step 2: hyper-parameters", "", level=2))
    out += made
    notes += why
    return out, notes


def confusion(view: Any, roles: Roles) -> tuple[list[dict[str, Any]], list[str]]:
    """Where the Step 1 model goes wrong: its confusion matrix (from predictions.csv)."""
    base = roles.baseline
    if base is None or "predictions.csv" not in view.artifact_names(base.id):
        return [], []
    rows = view.read_csv(base.id, "predictions.csv")
    counts = [[0] * len(CLASSES) for _ in CLASSES]
    for r in rows:
        counts[int(r["true"])][int(r["predicted"])] += 1
    name = "step1_confusion.png"
    plot_confusion(view.figure_path(name), counts, f"Step 1 model ({arch_text(base.flat_params())})")
    per_class = []
    for t, cls in enumerate(CLASSES):
        n = sum(counts[t])
        per_class.append([cls, n, pct(counts[t][t] / n) if n else "-"])
    worst = sorted(
        (
            (counts[t][p] / max(1, sum(counts[t])), CLASSES[t], CLASSES[p])
            for t in range(10)
            for p in range(10)
            if t != p
        ),
        reverse=True,
    )[:3]
    words = "; ".join(f"{100 * share:.1f} % of {t} predicted as {p}" for share, t, p in worst)
    body = [
        f"Test accuracy per class of the Step 1 model on {len(rows):,} test images, and the confusion matrix "
        f"(rows: true class, columns: predicted). Most confused: {words}.",
        f"![confusion matrix of the Step 1 model]({name})",
        table(["class", "test images", "accuracy"], per_class, "lrr"),
    ]
    return [section("9. Where the Step 1 model goes wrong", body, [name])], []
