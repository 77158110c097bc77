"""The Fashion-MNIST assignment's report sections, a `sweeper.report` plug-in.

`sweeper report` calls `sections(view)` with a read-only view of the sweep (see docs/reports.md "Report
plug-ins"): `view.jobs(stage)`, `view.stages`, `view.artifact(job_id, name)` (a sha256-verified
local copy), `view.read_json`, `view.read_csv` and `view.figure_path(name)`. It returns sections
as plain dicts, so it needs no sweeper types: from sweeper it uses only `sweeper.plots.pyplot` to
draw its figures.

Sections, each from what the jobs left behind:
  * loss curves of the diagnostics stage      (history.json of each train job there)
  * the best model's confusion matrix         (predictions.csv of the best train job)
  * pruning triplet tables, one per layer     (the prune jobs' results)
  * FLOPs Pareto plot marking the selected model, and the inference-timing table (the benchmark
    job's result)
A part whose stage is missing or unfinished is left out with a one-line note saying why. A sweep
with no train jobs at all is not this assignment: the plug-in then adds nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sweeper.plots import pyplot

from .classes import CLASSES
from .figures import plot_confusion

DIAGNOSTICS = "diagnostics"
TRAIN, PRUNE, BENCHMARK = "train", "prune", "benchmark"


def sections(view: Any) -> list[dict[str, Any]]:
    if not any(s.kind == TRAIN for s in view.stages):
        return []
    notes: list[str] = []
    out: list[dict[str, Any]] = []
    for part in (diagnostics_section, confusion_section, pruning_section, benchmark_sections):
        made, note = part(view)
        out += made
        if note:
            notes.append(note)
    if notes:
        out.append({"title": "Not in this report", "body": "\n".join(f"- {n}" for n in notes)})
    return out


# ---------------------------------------------------------------------------------------------
# Helpers


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:60] or "job"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v).replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return f"{100 * v:.2f} %" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _stages_of(view: Any, kind: str) -> list[Any]:
    return [s for s in view.stages if s.kind == kind]


# ---------------------------------------------------------------------------------------------
# Diagnostics: loss curves


def diagnostics_section(view: Any) -> tuple[list[dict[str, Any]], str | None]:
    stage = view.stage(DIAGNOSTICS)
    if stage is None:
        return [], f"Loss curves: the sweep has no `{DIAGNOSTICS}` stage."
    done = view.jobs(DIAGNOSTICS)
    if not done:
        return [], f"Loss curves: no job of `{DIAGNOSTICS}` has finished yet."
    plt = pyplot()
    figures, rows, skipped = [], [], []
    histories = []
    for job in done:
        try:
            history = view.read_json(job.id, "history.json")
        except Exception as exc:  # a missing or damaged artifact costs only this job's curve
            skipped.append(f"`{job.id}` ({job.label}): {exc}")
            continue
        name = f"diagnostics_{_slug(job.label or job.id)}.png"
        _plot_history(plt, view.figure_path(name), history, job.label or job.id)
        figures.append(name)
        histories.append((job, history))
        r = job.result
        rows.append(
            [
                job.label or "-",
                r.get("epochs"),
                r.get("train_loss"),
                r.get("test_loss"),
                _pct(r.get("train_accuracy")),
                _pct(r.get("test_accuracy")),
                r.get("time_to_target_s"),
                f"`{job.id}`",
            ]
        )
    if not figures:
        return [], "Loss curves: no diagnostics job has a readable history.json (" + "; ".join(skipped) + ")."
    overlay = "diagnostics_overlay.png"
    _plot_overlay(plt, view.figure_path(overlay), histories)
    body = [
        "Each run changes one setting of the baseline to show a failure mode (seed report, figs 2.5.a-e). "
        "Running training loss per logged batch; circles are the test loss at the end of each epoch.",
        _table(
            ["setting", "epochs", "train loss", "test loss", "train acc", "test acc", "time to target (s)", "job"],
            rows,
        ),
        f"![all diagnostics runs]({overlay})",
        *(f"![{f}]({f})" for f in figures),
    ]
    if skipped:
        body.append("Left out (no readable history.json): " + "; ".join(skipped))
    return [{"title": "Diagnostics: loss curves", "body": "\n\n".join(body), "figures": [overlay, *figures]}], None


def _plot_history(plt: Any, path: Any, history: Mapping[str, Any], title: str) -> None:
    points = history.get("points") or []
    epochs = history.get("epochs") or []
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot([p["step"] for p in points], [p["loss"] for p in points], lw=0.8, label="train (running)")
    ax_acc.plot([p["step"] for p in points], [p["train_acc"] for p in points], lw=0.8, label="train (running)")
    tested = [e for e in epochs if e.get("test_loss") is not None]
    if tested:
        steps = [e["step"] for e in tested]
        ax_loss.plot(steps, [e["test_loss"] for e in tested], "o-", ms=4, label="test (epoch end)")
        ax_acc.plot(steps, [e["test_acc"] for e in tested], "o-", ms=4, label="test (epoch end)")
    for ax, what in ((ax_loss, "cross-entropy loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("batches")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)


def _plot_overlay(plt: Any, path: Any, histories: list[tuple[Any, Mapping[str, Any]]]) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    for job, history in histories:
        points = history.get("points") or []
        # x in epochs (points carry a fractional epoch), so runs with different batch sizes line up
        xs = [p.get("epoch", p["step"]) for p in points]
        ax.plot(xs, [p["loss"] for p in points], lw=0.9, label=job.label or job.id)
    ax.set_xlabel("epochs")
    ax.set_ylabel("running train loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("diagnostics: training loss of every run", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Best model: confusion matrix


def confusion_section(view: Any) -> tuple[list[dict[str, Any]], str | None]:
    candidates = []
    for stage in _stages_of(view, TRAIN):
        if stage.name == DIAGNOSTICS:
            continue  # deliberately bad settings (and an overfitting model): not candidates
        candidates += [j for j in view.jobs(stage.name) if _num(j.result.get("test_accuracy")) is not None]
    candidates.sort(key=lambda j: (-(_num(j.result.get("test_accuracy")) or 0.0), j.position))
    best = next((j for j in candidates if "predictions.csv" in view.artifact_names(j.id)), None)
    if best is None:
        return [], "Confusion matrix: no finished train job recorded predictions.csv."
    rows = view.read_csv(best.id, "predictions.csv")
    counts = [[0] * len(CLASSES) for _ in CLASSES]
    for r in rows:
        counts[int(r["true"])][int(r["predicted"])] += 1
    name = "confusion_best.png"
    plot_confusion(view.figure_path(name), counts, f"{best.stage} {best.label}".strip())
    per_class = []
    for t, cls in enumerate(CLASSES):
        n = sum(counts[t])
        per_class.append([cls, n, _pct(counts[t][t] / n) if n else "-"])
    confusions = sorted(
        (
            (counts[t][p] / max(1, sum(counts[t])), CLASSES[t], CLASSES[p])
            for t in range(10)
            for p in range(10)
            if t != p
        ),
        reverse=True,
    )[:3]
    worst = "; ".join(f"{100 * share:.1f} % of {t} predicted as {p}" for share, t, p in confusions)
    acc = sum(counts[i][i] for i in range(10)) / max(1, len(rows))
    body = "\n\n".join(
        [
            f"Best train job by test accuracy: `{best.id}` (stage `{best.stage}`, {best.label or 'baseline'}), "
            f"test accuracy {_pct(acc)} on {len(rows)} test images. Most confused: {worst}.",
            f"![confusion matrix]({name})",
            _table(["class", "test images", "accuracy"], per_class),
        ]
    )
    return [{"title": "Best model: confusion matrix", "body": body, "figures": [name]}], None


# ---------------------------------------------------------------------------------------------
# Pruning: triplet tables


def _records(result: Mapping[str, Any], *prefer: str) -> list[dict[str, Any]]:
    """The first list of records in a result, trying the `prefer`red keys first."""
    for key in (*prefer, *result):
        value = result.get(key)
        if isinstance(value, list) and value and all(isinstance(x, Mapping) for x in value):
            return [dict(x) for x in value]
    return []


def _triplet_cell(key: str, value: Any) -> Any:
    """Accuracies as percentages and drops as signed percentage points, as in the seed's tables."""
    v = _num(value)
    if v is None or isinstance(value, int):
        return value
    if key in ("drop", "pruning_drop"):
        return f"{100 * v:+.2f} pt"
    if any(w in key for w in ("before", "after", "acc")):
        return _pct(v)
    return value


def pruning_section(view: Any) -> tuple[list[dict[str, Any]], str | None]:
    stages = _stages_of(view, PRUNE)
    if not stages:
        return [], "Pruning triplets: the sweep has no `kind: prune` stage."
    parts, missing = [], []
    for stage in stages:
        done = view.jobs(stage.name)
        if not done:
            missing.append(f"`{stage.name}`")
            continue
        for job in done:
            steps = _records(job.result, "triplets", "steps", "history")
            layer = job.params.get("layer") or job.result.get("layer") or stage.name
            if not steps:
                parts.append(f"**`{stage.name}`** (layer {layer}): the job reported no per-step table.")
                continue
            keys = list(dict.fromkeys(k for s in steps for k in s if not isinstance(s[k], (dict, list))))
            rows = [[_triplet_cell(k, s.get(k)) for k in keys] for s in steps]
            r = job.result
            summary = []
            if r.get("architecture") and _num(r.get("test_accuracy")) is not None:
                summary.append(f"result {r['architecture']} at {_pct(r['test_accuracy'])}")
            if _num(r.get("input_test_accuracy")) is not None:
                summary.append(f"input {_pct(r['input_test_accuracy'])}")
            if r.get("steps_tried") is not None:
                summary.append(f"{r.get('steps_accepted', '?')}/{r['steps_tried']} steps accepted")
            if r.get("stop_reason"):
                summary.append(f"stopped: {r['stop_reason']}")
            parts.append(
                f"**`{stage.name}`**: layer `{layer}`, job `{job.id}`"
                + (f"; {'; '.join(summary)}" if summary else "")
                + "\n\n"
                + _table(keys, rows)
            )
    if not parts:
        return [], "Pruning triplets: no prune job has finished (" + ", ".join(missing) + ")."
    body = (
        "Accuracy before pruning, right after removing the unit the heuristic picked, and after "
        "fine-tuning (the seed's triplets, tables 3.3.a-c), one step per removed channel or neuron."
    )
    if missing:
        body += "\n\nNot finished yet: " + ", ".join(missing) + "."
    return [{"title": "Pruning", "body": body + "\n\n" + "\n\n".join(parts)}], None


# ---------------------------------------------------------------------------------------------
# Benchmark: FLOPs Pareto, selected model, inference timing


def _model_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = _records(result, "models", "candidates")
    return [r for r in rows if _num(_get(r, "flops")) is not None and _num(_accuracy(r)) is not None]


def _get(record: Mapping[str, Any], key: str) -> Any:
    if key in record:
        return record[key]
    for v in record.values():
        if isinstance(v, Mapping) and key in v:
            return v[key]
    return None


def _accuracy(record: Mapping[str, Any]) -> Any:
    for key in ("test_accuracy", "accuracy", "test_acc"):
        v = _get(record, key)
        if v is not None:
            return v
    return None


def _name(record: Mapping[str, Any]) -> str:
    for key in ("name", "label", "arch", "job", "id"):
        v = record.get(key)
        if isinstance(v, str) and v:
            return v
    return "?"


def benchmark_sections(view: Any) -> tuple[list[dict[str, Any]], str | None]:
    stages = _stages_of(view, BENCHMARK)
    if not stages:
        return [], "FLOPs Pareto plot and inference timing: the sweep has no `kind: benchmark` stage."
    jobs = [j for s in stages for j in view.jobs(s.name)]
    if not jobs:
        return [], "FLOPs Pareto plot and inference timing: the benchmark job has not finished."
    job = jobs[-1]
    r = job.result
    out: list[dict[str, Any]] = []
    notes = []
    models = _model_rows(r)
    selected = r.get("selected")
    sel_name = _name(selected) if isinstance(selected, Mapping) else (selected if isinstance(selected, str) else None)
    if models:
        name = "flops_pareto.png"
        listed = r.get("pareto_front")
        front = _plot_flops(view.figure_path(name), models, sel_name, r.get("min_test_accuracy"))
        if isinstance(listed, list):
            front = set(listed)  # the benchmark's own front (it breaks ties its way)
        header = ["model", "architecture", "FLOPs", "params", "size (bytes)", "test acc", "Pareto", "selected"]
        rows = [
            [
                _name(m),
                m.get("architecture") or "-",
                f"{int(_num(_get(m, 'flops')) or 0):,}",
                _get(m, "params"),
                _get(m, "size_bytes") or _get(m, "size"),
                _pct(_accuracy(m)),
                "yes" if _name(m) in front else "",
                "**yes**" if sel_name and _name(m) == sel_name else "",
            ]
            for m in sorted(models, key=lambda m: (_num(_get(m, "flops")) or 0.0, -(_num(_accuracy(m)) or 0.0)))
        ]
        why = r.get("selection") or ""
        body = [
            f"Every distinct model of the pruning stages (benchmark job `{job.id}`), test accuracy against "
            f"analytic FLOPs per image. Selected: **{sel_name or 'none'}**" + (f" ({why})." if why else "."),
        ]
        if isinstance(selected, Mapping) and selected.get("architecture"):
            body.append(_selected_table(selected))
        body += [f"![FLOPs Pareto]({name})", _table(header, rows)]
        if r.get("flops_convention"):
            body.append(f"FLOPs: {r['flops_convention']}.")
        out.append({"title": "FLOPs and the selected model", "body": "\n\n".join(body), "figures": [name]})
    else:
        notes.append("the benchmark reported no per-model FLOPs and accuracy")
    timing = r.get("timing")
    if isinstance(timing, Mapping) and timing:
        out.append({"title": "Inference timing", "body": _timing_body(timing, r)})
    else:
        notes.append("the benchmark reported no timing")
    note = f"Benchmark job `{job.id}`: " + "; ".join(notes) + "." if notes else None
    return out, note


def _selected_table(sel: Mapping[str, Any]) -> str:
    """The seed's table 4.1: the selected model layer by layer."""
    arch = sel.get("arch") if isinstance(sel.get("arch"), Mapping) else {}
    rows = []
    for i, layer in enumerate(("conv1", "conv2"), 1):
        spec = arch.get(layer) if isinstance(arch.get(layer), Mapping) else None
        if spec:
            rows.append([i, f"Conv, {spec.get('kernel')}x{spec.get('kernel')}, {spec.get('channels')} filters, ReLU"])
    if arch.get("dense") is not None:
        rows.append([len(rows) + 1, f"Dense, {arch['dense']} neurons, ReLU"])
        rows.append([len(rows) + 1, "Dense, 10 neurons, softmax"])
    if not rows:
        rows = [[1, sel.get("architecture")]]
    facts = ", ".join(
        f"{k.replace('_', ' ')} {_cell(v) if k != 'test_accuracy' else _pct(v)}"
        for k, v in sel.items()
        if k in ("test_accuracy", "flops", "params", "size_bytes") and v is not None
    )
    return _table(["layer", "description"], rows) + (f"\n\n{facts}." if facts else "")


def _timing_body(t: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    lines = []
    if "nn_median_s" in t and "matmul_median_s" in t:
        rows = [
            ["nn.Conv2d / nn.Linear", _seconds(t.get("nn_median_s")), _seconds(t.get("nn_iqr_s")), "1.00"],
            [
                "matmul only (unfold + matmul)",
                _seconds(t.get("matmul_median_s")),
                _seconds(t.get("matmul_iqr_s")),
                _cell(t.get("matmul_over_nn")),
            ],
        ]
        if t.get("cuda_nn_median_s") is not None:
            rows.append(["CUDA: nn modules", _seconds(t["cuda_nn_median_s"]), "-", "-"])
            rows.append(
                ["CUDA: matmul only", _seconds(t.get("cuda_matmul_median_s")), "-", _cell(t.get("cuda_matmul_over_nn"))]
            )
        lines.append(_table(["inference over the test set", "median", "IQR", "× nn"], rows))
        context = [
            f"model {t.get('model', '?')}",
            f"{t.get('images', '?')} images at batch {t.get('batch_size', '?')}",
            f"{t.get('threads', '?')} thread(s)",
            f"{t.get('rounds', '?')} interleaved rounds",
        ]
        if t.get("cpu"):
            context.append(f"CPU {t['cpu']}")
        if t.get("torch"):
            context.append(f"torch {t['torch']}")
        if isinstance(t.get("cuda"), str):
            context.append(f"CUDA {t['cuda']}")
        lines.append("; ".join(context) + ".")
        lines.append("The seed report measured 1.62 s (nn modules) against 2.99 s (matmul), 1.85×, on Colab's CPU.")
    else:
        lines.append(_table(["measure", "value"], [[k, v] for k, v in t.items() if not isinstance(v, (dict, list))]))
    if result.get("matmul_allclose") is not None:
        lines.append(
            "The matmul re-implementation gives the same logits as the nn modules on the whole test set "
            f"(allclose: {_cell(result['matmul_allclose'])})."
        )
    return "\n\n".join(lines)


def _seconds(v: Any) -> str:
    n = _num(v)
    return "-" if n is None else f"{n:.3f} s"


def _plot_flops(path: Any, models: list[dict[str, Any]], selected: str | None, floor: Any) -> set[str]:
    plt = pyplot()
    pts = sorted((_num(_get(m, "flops")) or 0.0, _num(_accuracy(m)) or 0.0, _name(m)) for m in models)
    front, best = [], -1.0
    for x, y, n in pts:  # fewer FLOPs and higher accuracy are better
        if y > best:
            front.append((x, y, n))
            best = y
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=24, alpha=0.6, label="models")
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="tab:red", drawstyle="steps-post", ms=5)
    ax.plot([], [], "o-", color="tab:red", label="Pareto front")
    for x, y, n in front:
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6.5)
    if _num(floor) is not None:
        ax.axhline(float(floor), ls="--", color="gray", lw=0.8, label=f"accuracy floor {float(floor):.2f}")
    sel = next((p for p in pts if p[2] == selected), None)
    if sel is not None:
        ax.scatter([sel[0]], [sel[1]], s=220, marker="*", color="gold", edgecolor="black", zorder=5, label="selected")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per image (fewer is better)")
    ax.set_ylabel("test accuracy (higher is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("test accuracy against FLOPs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)
    return {p[2] for p in front}
