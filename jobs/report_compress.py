"""Steps 3 and 4 of the assignment: pruning triplets per layer, FLOPs, the selected model, matmul timing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sweeper.plots import pyplot

from .report_md import cell, count, details, pct, section, table
from .report_roles import Roles
from .report_stats import number, wilson

UNIT = {"conv1": "channels", "conv2": "channels", "fc1": "neurons"}
QUESTION = {"conv1": "14-15.", "conv2": "16.", "fc1": "16."}


def _kept(layer: str, arch: Mapping[str, Any] | None, architecture: str | None) -> Any:
    """How many channels or neurons of `layer` a pruned model keeps."""
    if isinstance(arch, Mapping):
        if layer in ("conv1", "conv2") and isinstance(arch.get(layer), Mapping):
            return arch[layer].get("channels")
        if layer == "fc1":
            return arch.get("dense")
    if architecture:  # "conv 3x3x16, conv 3x3x15, dense 100"
        m = re.match(r"conv \d+x\d+x(\d+), conv \d+x\d+x(\d+), dense (\d+)", architecture)
        if m:
            return int(m.group({"conv1": 1, "conv2": 2, "fc1": 3}[layer]))
    return None


def stop_words(reason: Any, layer: str) -> str:
    """The prune job's stop reason in plain words."""
    text = str(reason or "")
    if not text:
        return "the job recorded no stop reason"
    low = text.lower()
    if "cumulative" in low:
        return f"the cumulative limit: {text}"
    if "max_step_drop" in low or "drop" in low:
        return f"the 1% rule: {text}"
    if "max_steps" in low or "cap" in low:
        return f"a step cap, not the 1% rule ({text})"
    if "unit" in low or "left" in low:
        return f"only one {UNIT.get(layer, 'unit')[:-1]} was left ({text})"
    return text


def _steps(view: Any, job: Any) -> list[dict[str, Any]]:
    """The job's per-step records: pruning.json's steps (with each model's arch), else the result's triplets."""
    if "pruning.json" in view.artifact_names(job.id):
        try:
            table_ = view.read_json(job.id, "pruning.json")
            steps = table_.get("steps") if isinstance(table_, Mapping) else None
            if isinstance(steps, list) and all(isinstance(s, Mapping) for s in steps):
                return [dict(s) for s in steps]
        except Exception:
            pass  # fall back to the triplets in the result
    out = []
    for t in job.result.get("triplets") or []:
        out.append(
            {
                "step": t.get("step"),
                "architecture": t.get("architecture"),
                "accuracy_before": t.get("before"),
                "accuracy_after_prune": t.get("after_prune"),
                "accuracy_after_finetune": t.get("after_finetune"),
                "pruning_drop": t.get("drop"),
                "accepted": t.get("accepted"),
            }
        )
    return out


def step3(view: Any, roles: Roles) -> tuple[list[dict[str, Any]], list[str]]:
    if not roles.prune:
        return [], ["Step 3: the sweep has no `kind: prune` stage."]
    jobs = [j for s in roles.prune for j in view.jobs(s)]
    if not jobs:
        return [], [f"Step 3: no prune job has finished ({', '.join(roles.prune)})."]
    notes = [f"Step 3: `{s}` has not finished." for s in roles.prune if not view.jobs(s)]
    first = jobs[0]
    r0 = first.result
    unpruned = number(r0.get("input_test_accuracy"))
    src = view.job(str(r0.get("input_job"))) if r0.get("input_job") else None
    training = r0.get("training") if isinstance(r0.get("training"), Mapping) else {}
    rule = number(first.params.get("max_step_drop"))
    intro = [
        f"Pruning starts from the trained model with the highest test accuracy in Step 2 (item 13): run "
        f"`{r0.get('input_job', '?')}` of `{r0.get('input_stage', '?')}`"
        + (f" ({src.label})" if src is not None and src.label else "")
        + f", test accuracy {pct(unpruned)}.",
        "Heuristic (item 14): in the layer being pruned, remove the channel (or neuron) whose weights and bias "
        "have the smallest squared L2 norm: the unit that contributes least to the next layer's input. The "
        "unit is removed from the network (its weights and bias, and the next layer's inputs from it), which "
        "gives the same outputs as forcing them to zero. Test accuracy is measured right after the removal, "
        f"then the network is retrained {cell(training.get('epochs', 5))} epochs and measured again: the triplet "
        "(before pruning, after pruning, after retraining). The pruning drop of a step is before − after retraining.",
        f"Each layer stops at the first step whose pruning drop exceeds {100 * (rule if rule is not None else 0.01):.0f}% "
        "(item 15); that step is shown but not kept. The cumulative drop is the unpruned model's accuracy minus "
        "the accuracy after the step's retraining.",
    ]
    out = [section("Step 3: pruning", intro, level=2)]
    for job in jobs:
        layer = str(job.params.get("layer") or job.result.get("layer") or "?")
        steps = _steps(view, job)
        r = job.result
        rows = []
        for s in steps:
            after = number(s.get("accuracy_after_finetune"))
            cum = s.get("cumulative_drop")
            if cum is None and unpruned is not None and after is not None:
                cum = unpruned - after
            rows.append(
                [
                    cell(s.get("step")),
                    cell(_kept(layer, s.get("arch"), s.get("architecture"))),
                    pct(s.get("accuracy_before")),
                    pct(s.get("accuracy_after_prune")),
                    pct(after),
                    _pt(s.get("pruning_drop")),
                    _pt(cum),
                    count(s.get("flops")),
                    count(s.get("params")),
                    "yes" if s.get("accepted") else "no (stops here)",
                ]
            )
        kept_final = _kept(layer, r.get("arch"), r.get("architecture"))
        start = number(r.get("input_test_accuracy"))
        end = number(r.get("test_accuracy"))
        cum_final = unpruned - end if unpruned is not None and end is not None else None
        body = [
            f"Job `{job.id}` (stage `{job.stage}`) starts from {pct(start)} and keeps "
            f"{cell(kept_final)} {UNIT.get(layer, 'units')} after {cell(r.get('steps_accepted'))} of "
            f"{cell(r.get('steps_tried'))} step(s), at {pct(end)} test accuracy. "
            f"Stopped by {stop_words(r.get('stop_reason'), layer)}. Cumulative drop from the unpruned model: "
            f"{_pt(cum_final)}.",
        ]
        if rows:
            body.append(
                table(
                    [
                        "step",
                        f"{UNIT.get(layer, 'units')} kept",
                        "before",
                        "after pruning",
                        "after retraining",
                        "pruning drop",
                        "cumulative drop",
                        "FLOPs",
                        "params",
                        "kept",
                    ],
                    rows,
                    "rrrrrrrrrl",
                )
            )
        negative = [s for s in steps if (number(s.get("pruning_drop")) or 0.0) < 0]
        if negative:
            body.append(
                f"{len(negative)} step(s) have a negative drop: retraining for more epochs improved the model more "
                "than removing a unit hurt it, so part of the gain is extra training, not pruning."
            )
        out.append(section(f"{QUESTION.get(layer, '16.')} Layer {layer}", body))
    out.append(
        section(
            "16. Layer fc2 (the output layer)",
            "fc2 is the output layer: its 10 neurons are the 10 classes of Fashion-MNIST. Removing one would remove a "
            "class the model can predict, so it is not pruned (item 16's two fully connected layers are fc1, the "
            "hidden layer, and fc2, which keeps its 10 outputs).",
        )
    )
    return out, notes


def _pt(v: Any) -> str:
    n = number(v)
    return "-" if n is None else f"{100 * n:+.2f} pt"


# ---------------------------------------------------------------------------------------------
# Step 4


def _models(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    models = result.get("models")
    if not isinstance(models, list):
        return []
    return [
        dict(m)
        for m in models
        if isinstance(m, Mapping) and number(m.get("flops")) is not None and number(m.get("test_accuracy")) is not None
    ]


def step4(view: Any, roles: Roles, baseline: Any | None) -> tuple[list[dict[str, Any]], list[str]]:
    if not roles.benchmark:
        return [], ["Step 4: the sweep has no `kind: benchmark` stage."]
    jobs = [j for s in roles.benchmark for j in view.jobs(s)]
    if not jobs:
        return [], ["Step 4: the benchmark job has not finished."]
    job = jobs[-1]
    r = job.result
    notes: list[str] = []
    out = [
        section(
            "Step 4: a faster model", f"From benchmark job `{job.id}`: every model of Step 3, measured again.", level=2
        )
    ]
    models = _models(r)
    selected = r.get("selected") if isinstance(r.get("selected"), Mapping) else None
    sel_model = next((m for m in models if selected and m.get("name") == selected.get("name")), None)
    floor = number(r.get("min_test_accuracy"))

    formula = [
        "FLOPs of one forward pass of one image, with n input channels (or features), k the filter size, f output "
        "channels, H'×W' the output size of a convolution and m the outputs of a dense layer:",
        "    conv:   FLOPs = (2·n·k² − 1 + a) · f · H' · W'\n    dense:  FLOPs = m · (2n − 1 + a)",
        "Each output value takes n·k² multiplications and n·k² − 1 additions; a = 1 counts the bias add. ReLU "
        "and max-pooling are not counted. "
        + (f"The benchmark's convention: {r['flops_convention']}." if r.get("flops_convention") else ""),
    ]
    if sel_model and isinstance(sel_model.get("layers"), Mapping):
        rows, total = [], 0
        for name, c in sel_model["layers"].items():
            n, f, k, a = c.get("inputs"), c.get("outputs"), c.get("kernel"), c.get("a")
            if c.get("kind") == "conv":
                h, w = c.get("out_h"), c.get("out_w")
                calc = f"(2·{n}·{k}² − 1 + {a}) · {f} · {h} · {w}"
                value = (2 * n * k * k - 1 + a) * f * h * w
            else:
                calc = f"{f} · (2·{n} − 1 + {a})"
                value = f * (2 * n - 1 + a)
            total += value
            rows.append([name, calc, f"{value:,}"])
        rows.append(["**total**", "", f"**{total:,}**"])
        formula.append(f"For the selected model ({selected.get('architecture') if selected else '?'}):")
        formula.append(table(["layer", "formula", "FLOPs"], rows, "llr"))
        reported = number(sel_model.get("flops"))
        if reported is not None:
            same = "equal to" if int(reported) == total else "different from"
            formula.append(f"The formula gives {total:,} FLOPs, {same} the {int(reported):,} the benchmark computed.")
    if models:
        name = "flops_pareto.png"
        _plot_flops(view.figure_path(name), models, selected.get("name") if selected else None, floor)
        formula.append(f"![test accuracy against FLOPs]({name})")
        front = set(r.get("pareto_front") or [])
        rows = [
            [m.get("name"), m.get("stage", "-"), m.get("architecture", "-"), count(m.get("flops")), count(m.get("params")),
             pct(m.get("test_accuracy")), "yes" if m.get("name") in front else "",
             "**selected**" if selected and m.get("name") == selected.get("name") else ""]
            for m in sorted(models, key=lambda m: (m["flops"], -m["test_accuracy"]))
        ]  # fmt: skip
        formula.append(
            details(
                f"All {len(models)} models of Step 3 (sorted by FLOPs)",
                table(
                    ["model", "stage", "architecture", "FLOPs", "params", "test accuracy", "Pareto front", ""],
                    rows,
                    "llllrrll",
                ),
            )
        )
        out.append(section("18. FLOPs and the Pareto plot", formula, [name]))
    else:
        out.append(section("18. FLOPs and the Pareto plot", formula))
        notes.append("Step 4: the benchmark reported no per-model FLOPs and accuracy.")

    n_test = number(r.get("test_images")) or number((r.get("timing") or {}).get("images"))
    if selected:
        acc = number(selected.get("test_accuracy"))
        lines = [
            f"The model with the fewest FLOPs among those above {pct(floor, 0)} test accuracy (item 19): "
            f"**{selected.get('name')}** from `{selected.get('stage', '?')}`, {selected.get('architecture', '?')}, "
            f"{count(selected.get('flops'))} FLOPs, {count(selected.get('params'))} parameters.",
        ]
        if acc is not None and n_test:
            lo, hi = wilson(acc, int(n_test))
            margin = round((acc - (floor or 0.0)) * n_test)
            lines.append(
                f"Test accuracy {pct(acc)}, 95% interval {100 * lo:.2f} to {100 * hi:.2f} % over the {int(n_test):,} "
                f"test images (Wilson score interval). It clears {pct(floor, 0)} by {margin:,} test image(s)"
                + (
                    f"; {pct(floor, 0)} lies inside the interval, so on another test set of this size it could fall below."
                    if floor is not None and lo <= floor
                    else "; the whole interval lies above it."
                )
            )
        out.append(section("19. The selected model", lines))
    else:
        out.append(section("19. The selected model", f"_No model is above {pct(floor, 0)} test accuracy._"))
    out.append(section("20. The model as matrix multiplications, and its speed", _timing(r, baseline)))
    return out, notes


def _timing(r: Mapping[str, Any], baseline: Any | None) -> list[str]:
    t = r.get("timing") if isinstance(r.get("timing"), Mapping) else {}
    lines = [
        "The selected model rewritten with matrix multiplications only (no `conv2d` or `Linear` layers): each "
        "convolution unfolds the image into patches and multiplies them by the filters as one matrix, and each "
        "dense layer is a matrix product, with the weights loaded from the trained model."
    ]
    if r.get("matmul_allclose") is not None:
        same = "the same logits as" if r["matmul_allclose"] else "different logits from"
        lines.append(f"On the whole test set it gives {same} the nn-module version (allclose).")
    nn, mm = number(t.get("nn_median_s")), number(t.get("matmul_median_s"))
    orig = number(t.get("original_nn_median_s") or r.get("original_nn_median_s"))
    if nn is None or mm is None:
        lines.append("_The benchmark recorded no timing._")
        return lines
    rows = []
    if orig is not None:
        rows.append(["Step 1 network, nn modules", _s(orig), _s(t.get("original_nn_iqr_s")), "1.00", "-"])
    rows.append(["selected model, nn modules", _s(nn), _s(t.get("nn_iqr_s")), _x(nn, orig), "1.00"])
    rows.append(["selected model, matmul only", _s(mm), _s(t.get("matmul_iqr_s")), _x(mm, orig), _x(mm, nn)])
    lines.append(
        table(["inference over the test set", "median", "IQR", "× Step 1 network", "× nn, same model"], rows, "lrrrr")
    )
    context = (
        f"{cell(t.get('images'))} images at batch {cell(t.get('batch_size'))}, {cell(t.get('threads'))} thread(s), "
        f"{cell(t.get('rounds'))} interleaved rounds, all measured in the same run"
        + (f", CPU {t['cpu']}" if t.get("cpu") else "")
        + "."
    )
    lines.append(context)
    if orig is not None:
        faster = orig / mm
        lines.append(
            f"Against the original network of Step 1 (item 20), the matmul version of the selected model takes "
            f"{mm / orig:.2f}× the time ({'faster' if faster > 1 else 'slower'}, {max(faster, 1 / faster):.2f}×)."
        )
    else:
        lines.append(
            "_The benchmark did not time the Step 1 network (`original_nn_median_s`), so the comparison with the "
            "original network of item 20 is missing; a newer benchmark job records it._"
        )
    return lines


def _s(v: Any) -> str:
    n = number(v)
    return "-" if n is None else f"{n:.3f} s"


def _x(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def _plot_flops(path: Any, models: list[dict[str, Any]], selected: str | None, floor: float | None) -> None:
    plt = pyplot()
    pts = sorted((float(m["flops"]), 100 * float(m["test_accuracy"]), str(m.get("name"))) for m in models)
    front, best = [], -1.0
    for x, y, n in pts:
        if y > best:
            front.append((x, y, n))
            best = y
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=24, alpha=0.6, label="pruned models")
    ax.plot(
        [p[0] for p in front], [p[1] for p in front], "-", color="tab:red", drawstyle="steps-post", label="Pareto front"
    )
    if floor is not None:
        ax.axhline(100 * floor, ls="--", color="gray", lw=0.8, label=f"{100 * floor:.0f}% accuracy")
    sel = next((p for p in pts if p[2] == selected), None)
    if sel is not None:
        ax.scatter([sel[0]], [sel[1]], s=220, marker="*", color="gold", edgecolor="black", zorder=5, label="selected")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per image (fewer is better)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("Step 4: test accuracy against FLOPs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)
