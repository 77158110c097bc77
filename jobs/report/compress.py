"""Steps 3 and 4 of the assignment: pruning triplets per layer, FLOPs, the selected model, matmul timing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jobs.kinds.benchmark_result import BenchmarkResult, ModelRecord
from jobs.report.md import cell, count, details, pct, section, table
from jobs.report.roles import Roles
from jobs.report.stats import number, wilson
from sweeper.plots import pyplot

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


def stop_in_words(result: Mapping[str, Any], steps: list[dict[str, Any]], layer: str) -> str:
    """Which rule stopped the layer, with the rejected step's own figures; the recorded reason otherwise."""
    last = steps[-1] if steps else None
    if last is None or last.get("accepted") or last.get("pruning_drop") is None:
        return stop_words(result.get("stop_reason"), layer)
    step_rule, total_rule = number(result.get("max_step_drop")), number(result.get("max_total_drop"))
    drop, total = number(last.get("pruning_drop")), number(last.get("total_drop"))
    eps = 1e-9
    parts = []
    if step_rule is not None and drop is not None and drop > step_rule + eps:
        parts.append(("the 1% rule", f"step {cell(last.get('step'))} cost {_pt(drop, signed=False)}, more than "
                      f"{_pt(step_rule, signed=False)}"))  # fmt: skip
    if total_rule is not None and total is not None and total > total_rule + eps:
        parts.append(("the cumulative limit", f"step {cell(last.get('step'))} took the cumulative drop to "
                      f"{_pt(total, signed=False)}, more than {_pt(total_rule, signed=False)}"))  # fmt: skip
    if not parts:
        return stop_words(result.get("stop_reason"), layer)
    rules = " and ".join(name for name, _ in parts)
    return f"{rules} ({'; '.join(why for _, why in parts)})"


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
    r0 = jobs[0].result
    unpruned = number(r0.get("input_test_accuracy"))
    src = view.job(str(r0.get("input_job"))) if r0.get("input_job") else None
    training = r0.get("training") if isinstance(r0.get("training"), Mapping) else {}
    step_rule = number(r0.get("max_step_drop", jobs[0].params.get("max_step_drop", 0.01)))
    total_rule = next(
        (v for j in jobs if (v := number(j.result.get("max_total_drop", j.params.get("max_total_drop")))) is not None),
        None,
    )
    control = any(j.result.get("control") for j in jobs)
    n_epochs = training.get("epochs", 5)
    epochs = f"{cell(n_epochs)} epoch{'' if n_epochs == 1 else 's'}"
    intro = [
        "Item 13: “Take the trained model which has the highest test accuracy in Step 2.” Pruning starts from "
        "that single model, the most accurate of every run of Step 2 (both grids and their seed repeats): "
        + (_model_words(src) if src is not None else f"a run of {r0.get('input_stage', '?')}")
        + f", test accuracy {pct(unpruned)}."
        + _start_in_context(view, roles, src),
        "Heuristic (item 14): in the layer being pruned, remove the channel (or neuron) whose weights and bias "
        "have the smallest squared L2 norm: the unit that contributes least to the next layer's input. The "
        "unit is removed from the network (its weights and bias, and the next layer's inputs from it), which "
        "gives the same outputs as forcing them to zero. Test accuracy is measured right after the removal, "
        f"then the network is retrained {epochs} and measured again: the triplet (before pruning, after "
        "pruning, after retraining).",
    ]
    caps = {cell(v) for j in jobs if (v := j.result.get("max_steps", j.params.get("max_steps"))) is not None}
    rule_is_raw = all(
        j.result.get("drop_rule", "controlled" if j.result.get("control") else "raw") == "raw" for j in jobs
    )
    intro.append(
        "The rule is the assignment's. Item 14: “The difference between the first and last number is called the "
        "pruning drop”; item 15: prune “until the incremental pruning drop does not exceed 1% for a single step”. "
        f"We read 1% as {_pt(step_rule, signed=False)} of test accuracy (a drop from 89.0% to 88.0%, not 1% of "
        "89.0%). So a layer stops at the first step whose pruning drop, the accuracy before the step minus the "
        "accuracy after its retraining, exceeds that; the step is reported and not kept, and the next layer "
        "starts from the last kept model."
        + (
            " There is no limit on the drop summed over steps and no cap on the number of steps."
            if not caps and total_rule is None
            else ""
        )
        if rule_is_raw
        else "The rule judges the controlled drop (below), not the assignment's raw drop: the sweep set "
        "`drop: controlled`."
    )
    if control:
        intro.append(
            f"_Beside the rule, labelled as information:_ retraining {epochs} more would improve even an unpruned "
            f"model, and the raw drop does not see that. So beside every step an unpruned copy (the control) is "
            f"retrained {epochs} too. The controlled drop, (before − after retraining) + (the control's gain in "
            "those epochs), is what pruning itself cost; the cumulative drop is the control's accuracy minus the "
            "pruned model's, added up over the layers. Where the model still gains from more training, the raw "
            "rule accepts steps that cost accuracy, because the extra epochs hide the cost: the columns below "
            "show both."
        )
        stop_gain = next(
            (number(j.result.get("control_stop_gain")) for j in jobs if j.result.get("control_stop_gain")), None
        )
        if stop_gain is not None:
            intro.append(
                f"The control is retrained only while that tells something: once one retraining gains it less than "
                f"{_pt(stop_gain, signed=False)} (about one standard error of the test accuracy), more training no "
                "longer moves it, so the later steps of the layer keep its last accuracy (a gain of 0) instead of "
                "retraining it again."
            )
    else:
        intro.append(
            "The pruning drop of a step is before − after retraining; the cumulative drop is the unpruned model's "
            "accuracy minus the accuracy after the step's retraining."
        )
    if caps:
        intro.append(
            f"This sweep also stopped a layer after {', '.join(sorted(caps))} step(s) (max_steps): a cap of its "
            "own, not the assignment's, so a layer can stop before the rule would stop it."
        )
    if total_rule is not None:
        intro.append(
            f"This sweep also stopped a layer when the cumulative drop exceeded {_pt(total_rule, signed=False)}: a "
            "limit of its own, not the assignment's."
        )
    out = [section("Step 3: pruning", intro, level=2)]
    for job in jobs:
        out.append(_layer(view, job, unpruned, control))
    output_layer = next((str(j.result["output_layer"]) for j in jobs if j.result.get("output_layer")), None)
    out.append(
        section(
            "16. Layer fc2 (the output layer)",
            "Item 16 asks for “the two fully connected layers”. fc2 is the output layer: its 10 neurons are the 10 "
            "classes of Fashion-MNIST, and removing one would remove a class the model can predict, so it keeps its "
            "10 units and only fc1, the hidden layer, is pruned."
            + (f" The prune jobs record the same: “{output_layer}”." if output_layer else ""),
        )
    )
    return out, notes


def _layer(view: Any, job: Any, unpruned: float | None, control: bool) -> dict[str, Any]:
    layer = str(job.params.get("layer") or job.result.get("layer") or "?")
    r = job.result
    steps = _steps(view, job)
    rows = []
    for s in steps:
        after = number(s.get("accuracy_after_finetune"))
        cum = s.get("total_drop")
        if cum is None and unpruned is not None and after is not None:
            cum = unpruned - after
        rows.append(
            [
                cell(s.get("step")),
                cell(_kept(layer, s.get("arch"), s.get("architecture"))),
                pct(s.get("accuracy_before")),
                pct(s.get("accuracy_after_prune")),
                pct(after),
                _pt(_raw(s)),
                *([pct(s.get("control_accuracy")), _pt(_controlled(s))] if control else []),
                _pt(cum),
                count(s.get("flops")),
                count(s.get("params")),
                "yes" if s.get("accepted") else "no (stops here)",
            ]
        )
    end = number(r.get("test_accuracy"))
    cum_final = r.get("total_drop")
    if cum_final is None and unpruned is not None and end is not None:
        cum_final = unpruned - end
    unit = UNIT.get(layer, "units")
    body = [
        f"Starts from {pct(r.get('input_test_accuracy'))} and keeps "
        f"{cell(_kept(layer, r.get('arch'), r.get('architecture')))} {unit} after {cell(r.get('steps_accepted'))} of "
        f"{cell(r.get('steps_tried'))} step(s), at {pct(end)} test accuracy. Stopped by "
        f"{stop_in_words(r, steps, layer)}. Cumulative drop from the unpruned model: {_pt(cum_final)}.",
    ]
    converged = r.get("control_converged_at_step")
    measured = [s for s in steps if s.get("control_measured", True)]
    if control and measured and number(measured[-1].get("control_accuracy")) is not None:
        start, last = number(r.get("input_test_accuracy")), number(measured[-1].get("control_accuracy"))
        which = "step 1" if len(measured) == 1 else f"steps 1 to {len(measured)}"
        moved = "gained" if last is not None and start is not None and last >= start else "lost"
        text = (
            f"This layer's control is its input, {pct(start)}, retrained beside {which}: it went to {pct(last)}, "
            f"so more training alone {moved} {_pt(abs(last - start) if start is not None and last is not None else None, signed=False)}"
        )
        if moved == "lost":
            text += (
                " (more epochs no longer help this model: the fall is overfitting plus test-set noise, and the pruned"
                " models are compared with this lower reference)"
            )
        if converged:
            text += f". At step {cell(converged)} a retraining gained it less than the stop threshold, so the later steps keep that accuracy"
        body.append(text + ".")
    if rows:
        header = ["step", f"{unit} kept", "before", "after pruning", "after retraining", "pruning drop (the rule)",
                  *(["control (unpruned)", "controlled drop (information)"] if control else []), "cumulative drop",
                  "FLOPs", "params", "kept"]  # fmt: skip
        body.append(table(header, rows, "r" * (len(header) - 1) + "l"))
    negative = [s for s in steps if (_raw(s) or 0.0) < 0]
    if negative:
        body.append(
            f"{len(negative)} step(s) have a negative pruning drop: retraining for more epochs improved the model "
            "more than removing a unit hurt it, so part of the gain is extra training, not pruning."
        )
    if control:
        hidden = [
            s
            for s in steps
            if s.get("accepted") and (_controlled(s) or 0.0) > (number(r.get("max_step_drop")) or 0.01) + 1e-9
        ]
        if hidden:
            body.append(
                f"What the raw rule misses: {len(hidden)} accepted step(s) (step "
                + ", ".join(cell(s.get("step")) for s in hidden)
                + ") cost more than the limit once the control's gain is counted; the extra epochs hid it."
            )
    shot = (getattr(view, "mlflow_stage_screenshots", None) or {}).get(job.stage)
    if shot:
        body.append(
            "The same steps as an MLflow table (item 16: “Report all results with the help of MLFlow tables”): one "
            f"row per step under the layer's run, in step order.\n\n![MLflow table of the {layer} pruning steps]({shot})"
        )
    return section(f"{QUESTION.get(layer, '16.')} Layer {layer}", body, [shot] if shot else [])


def _raw(step: Mapping[str, Any]) -> float | None:
    """The assignment's pruning drop: accuracy before the step minus after its retraining."""
    before, after = number(step.get("accuracy_before")), number(step.get("accuracy_after_finetune"))
    return number(step.get("raw_drop")) if before is None or after is None else before - after


def _controlled(step: Mapping[str, Any]) -> float | None:
    """The raw drop plus the control's gain (older records: their pruning_drop was this)."""
    value = number(step.get("controlled_drop"))
    return value if value is not None else number(step.get("pruning_drop"))


def _model_words(job: Any) -> str:
    """A trained model in words: its network and its training settings."""
    from jobs.report.md import arch_text

    flat = job.flat_params()
    training = ", ".join(
        f"{name} {cell(flat[key])}"
        for key, name in (("init", "init"), ("batch_size", "batch"), ("lr", "lr"), ("momentum", "momentum"))
        if key in flat
    )
    return f"{arch_text(flat)}" + (f", trained with {training}" if training else "")


def _start_in_context(view: Any, roles: Roles, src: Any) -> str:
    """What the seed repeats say about the starting model's configuration (the winner's curse)."""
    if src is None:
        return ""
    from jobs.report.stats import config_key, group_configs

    jobs = [j for g in roles.grids for j in g.all_jobs]
    key = config_key(src.params)
    config = next((c for c in group_configs(jobs) if config_key(c.first.params) == key), None)
    if config is None or config.n < 2 or config.std is None or config.mean is None:
        return " Its configuration ran with one seed, so how much of its lead is luck cannot be told."
    others = [v for j in config.jobs if j.id != src.id and (v := number(j.result.get("test_accuracy"))) is not None]
    rest = f"; its other seeds reach {', '.join(pct(v) for v in others)}" if others else ""
    return (
        f" Its configuration averages {pct(config.mean)} ± {100 * config.std:.2f} points over {config.n} seeds"
        f"{rest}. The single best of {len(jobs)} runs is partly luck (the winner's curse): expect a retrained "
        "copy of this configuration near the mean, not near this run."
    )


def _pt(v: Any, signed: bool = True) -> str:
    n = number(v)
    if n is None:
        return "-"
    if signed:
        return f"{100 * n:+.2f} pt"
    points = 100 * n
    text = f"{points:.0f}" if abs(points - round(points)) < 1e-9 else f"{points:.2f}"
    return f"{text} point" + ("" if text == "1" else "s")


# ---------------------------------------------------------------------------------------------
# Step 4: read through the benchmark's typed result (jobs/kinds/benchmark_result.py), never by guessed keys


def step4(view: Any, roles: Roles) -> tuple[list[dict[str, Any]], list[str]]:
    if not roles.benchmark:
        return [], ["Step 4: the sweep has no `kind: benchmark` stage."]
    jobs = [j for s in roles.benchmark for j in view.jobs(s)]
    if not jobs:
        return [], ["Step 4: the benchmark job has not finished."]
    job = jobs[-1]
    try:
        r = BenchmarkResult.read(job.result)
    except ValueError as exc:
        return [], [f"Step 4: benchmark job `{job.id}`'s result does not match jobs/kinds/benchmark_result.py ({exc})."]
    intro = f"From benchmark job `{job.id}`: every model of Step 3, measured again on {r.test_images:,} test images."
    out = [section("Step 4: a faster model", intro, level=2)]
    notes: list[str] = []
    sel = r.selected
    sel_model = next((m for m in r.models if sel is not None and m.name == sel.name), None)
    out.append(_flops_part(view, r, sel_model))
    if not r.models:
        notes.append("Step 4: the benchmark reported no models.")
    if sel is not None:
        lo, hi = wilson(sel.test_accuracy, r.test_images)
        floor = r.min_test_accuracy
        margin = round((sel.test_accuracy - floor) * r.test_images)
        inside = (
            f"; {pct(floor, 0)} lies inside the interval, so on another test set of this size it could fall below."
            if lo <= floor
            else "; the whole interval lies above it."
        )
        lines = [
            f"The model with the fewest FLOPs among those above {pct(floor, 0)} test accuracy (item 19): "
            f"**{sel.name}** from `{sel.stage}`, {sel.architecture}, {sel.flops:,} FLOPs, {sel.params:,} parameters.",
            f"Test accuracy {pct(sel.test_accuracy)}, 95% interval {100 * lo:.2f} to {100 * hi:.2f} % over the "
            f"{r.test_images:,} test images (Wilson score interval). It clears {pct(floor, 0)} by {margin:,} test "
            f"image(s){inside}",
        ]
        if _rejected(view, sel):
            lines.append(
                f"This model is step {sel.step} of `{sel.stage}`, the step that broke that layer's stopping rule in "
                "Step 3 (the pruning chain did not keep it). Item 19 chooses among every model measured, so it is "
                "still a candidate: its accuracy is above the floor."
            )
        out.append(section("19. The selected model", lines))
    else:
        out.append(section("19. The selected model", f"_{r.selection}._"))
    out.append(section("20. The model as matrix multiplications, and its speed", _timing(r)))
    return out, notes


def _rejected(view: Any, sel: ModelRecord) -> bool:
    """Whether the selected model is a pruning step its prune job did not accept."""
    for job in view.jobs(sel.stage):
        for t in job.result.get("triplets") or []:
            if isinstance(t, Mapping) and t.get("step") == sel.step and t.get("accepted") is False:
                return True
    return False


def _flops_part(view: Any, r: BenchmarkResult, sel: ModelRecord | None) -> dict[str, Any]:
    lines = [
        "FLOPs of one forward pass of one image, with n input channels (or features), k the filter size, f output "
        "channels, H'×W' the output size of a convolution and m the outputs of a dense layer:",
        "    conv:   FLOPs = (2·n·k² − 1 + a) · f · H' · W'\n    dense:  FLOPs = m · (2n − 1 + a)",
        "Each output value takes n·k² multiplications and n·k² − 1 additions; a counts the other operations per "
        f"output value. The benchmark's convention: {r.flops_convention}.",
    ]
    if sel is not None and sel.layers:
        rows, total = [], 0
        for name, c in sel.layers.items():
            n, f, k, a = c["inputs"], c["outputs"], c["kernel"], c["a"]
            if c["kind"] == "conv":
                calc, value = (
                    f"(2·{n}·{k}² − 1 + {a}) · {f} · {c['out_h']} · {c['out_w']}",
                    (2 * n * k * k - 1 + a) * f * c["out_h"] * c["out_w"],
                )
            else:
                calc, value = f"{f} · (2·{n} − 1 + {a})", f * (2 * n - 1 + a)
            total += value
            rows.append([name, calc, f"{value:,}"])
        rows.append(["**total**", "", f"**{total:,}**"])
        same = "equal to" if total == sel.flops else "different from"
        lines += [
            f"For the selected model ({sel.architecture}):",
            table(["layer", "formula", "FLOPs"], rows, "llr"),
            f"The formula gives {total:,} FLOPs, {same} the {sel.flops:,} the benchmark computed.",
        ]
    figures = []
    if r.models:
        name = "flops_pareto.png"
        _plot_flops(view.figure_path(name), r.models, sel.name if sel else None, r.min_test_accuracy)
        figures.append(name)
        front = set(r.pareto_front)
        rows = [
            [m.name, m.stage, m.architecture, f"{m.flops:,}", f"{m.params:,}", pct(m.test_accuracy),
             "yes" if m.name in front else "", "**selected**" if sel is not None and m.name == sel.name else ""]
            for m in sorted(r.models, key=lambda m: (m.flops, -m.test_accuracy))
        ]  # fmt: skip
        lines.append(
            f"Test accuracy against FLOPs for every model of Step 3 (item 18); the star is the selected model.\n\n"
            f"![test accuracy against FLOPs]({name})"
        )
        lines.append(
            details(
                f"All {len(r.models)} models of Step 3 (sorted by FLOPs)",
                table(
                    ["model", "stage", "architecture", "FLOPs", "params", "test accuracy", "Pareto front", ""],
                    rows,
                    "llllrrll",
                ),
            )
        )
    return section("18. FLOPs and the Pareto plot", lines, figures)


def _timing(r: BenchmarkResult) -> list[str]:
    t = r.timing
    lines = [
        "The selected model rewritten with matrix multiplications only (no `conv2d` or `Linear` layers): each "
        "convolution unfolds the image into patches and multiplies them by the filters as one matrix, and each "
        "dense layer is a matrix product, with the weights loaded from the trained model. On the whole test set "
        f"it gives {'the same logits as' if r.matmul_allclose else 'different logits from'} the nn-module version "
        "(allclose).",
    ]
    if t.note:
        lines.append(f"_{t.note}_")
    orig = t.original_nn_median_s
    rows = []
    if orig is not None:
        what = r.original.architecture if r.original is not None else t.original_model
        rows.append([f"Step 1 network ({what}), nn modules", _s(orig), _s(t.original_nn_iqr_s), "1.00", "-"])
    rows.append(
        [f"selected model ({t.model}), nn modules", _s(t.nn_median_s), _s(t.nn_iqr_s), _x(t.nn_median_s, orig), "1.00"]
    )
    rows.append(
        ["selected model, matmul only", _s(t.matmul_median_s), _s(t.matmul_iqr_s), _x(t.matmul_median_s, orig),
         f"{t.matmul_over_nn:.2f}"]
    )  # fmt: skip
    lines.append(
        table(["inference over the test set", "median", "IQR", "× Step 1 network", "× nn, same model"], rows, "lrrrr")
    )
    lines.append(
        f"{t.images:,} images at batch {t.batch_size}, {t.threads} thread(s), {t.rounds} interleaved rounds, all "
        f"measured in the same run"
        + (f", CPU {t.cpu}" if t.cpu else "")
        + (f", torch {t.torch}" if t.torch else "")
        + "."
    )
    if orig is not None:
        ratio = t.matmul_median_s / orig
        lines.append(
            f"Against the original network of Step 1 (item 20), the matmul version of the selected model takes "
            f"{ratio:.2f}× the time: {'faster' if ratio < 1 else 'slower'}, by {max(ratio, 1 / ratio):.2f}×."
        )
    else:
        lines.append(
            "_The Step 1 network was not timed (the benchmark stage has no `original` param), so the comparison "
            "item 20 asks for is missing._"
        )
    if t.cuda_nn_median_s is not None:
        lines.append(
            table(
                ["on the GPU", "median"],
                [
                    ["selected model, nn modules", _s(t.cuda_nn_median_s)],
                    ["selected model, matmul only", _s(t.cuda_matmul_median_s)],
                    ["Step 1 network, nn modules", _s(t.cuda_original_nn_median_s)],
                ],
                "lr",
            )
            + (f"\n\nGPU: {t.cuda_device}." if t.cuda_device else "")
        )
    elif t.cuda:
        lines.append(f"GPU: not timed ({t.cuda}).")
    return lines


def _s(v: Any) -> str:
    n = number(v)
    return "-" if n is None else f"{n:.3f} s"


def _x(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def _plot_flops(path: Any, models: list[ModelRecord], selected: str | None, floor: float | None) -> None:
    plt = pyplot()
    pts = sorted((float(m.flops), 100 * m.test_accuracy, m.name) for m in models)
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
