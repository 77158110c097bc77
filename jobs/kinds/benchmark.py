"""`kind: benchmark`: FLOPs, size, accuracy and inference time of every model the upstream produced.

For each distinct model (the unpruned input and every prune step of the upstream prune jobs,
told apart by sha256):

* analytic FLOPs and MACs per layer (jobs/ml/flops.py; a = 1 for the bias add unless
  count_activation), parameter count, non-zero parameters, serialized size in bytes;
* test accuracy, measured here on the test set;
* the matmul-only re-implementation (jobs/ml/matmul.py), loaded from the same weights, checked
  allclose to the nn modules on the whole test set.

Then the Pareto front of test accuracy against FLOPs, and the selected model: the fewest FLOPs
among models with test accuracy above min_test_accuracy. The selected model (or every model,
with time_all) is timed over the test set at inference_batch_size, nn modules against matmul,
with torch.utils.benchmark at a fixed thread count: rounds interleaved (nn, matmul, nn, ...) so
that load from other processes hits both alike; median and IQR reported. With `original` (a
hand-off to the Step 1 network, e.g. `{result_of: baseline}`), that network runs with nn modules
as a third variant in the same rounds: `timing.original_nn_median_s`, the assignment's "matmul
model against the original network". With CUDA the GPU path is timed too
(torch.utils.benchmark synchronizes CUDA around each timed run).

Outputs: the result (schema: jobs/kinds/benchmark_result.py; also `benchmark.json`), MLflow metrics,
`pareto.png`.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jobs.kinds import upstream
from jobs.kinds.benchmark_result import BenchmarkResult, ModelRecord, OriginalModel, Timing
from jobs.kinds.params import BenchmarkParams, parse
from jobs.ml import magnitude
from jobs.ml.data import Dataset, load_dataset
from jobs.ml.flops import model_cost
from jobs.ml.matmul import MatmulCNN
from jobs.ml.model import CNN, count_params, load_model
from jobs.ml.torchbench import benchmark as tbench
from jobs.ml.training import evaluate
from sweeper.context import JobContext, JobFailed
from sweeper.plots import pyplot

STATE_VERSION = 1
EXAMPLE = "{all_of: [prune_conv1, prune_conv2, prune_fc1]}"
ORIGINAL_EXAMPLE = "{result_of: baseline}"


@dataclass
class BenchmarkState:
    """What the job has measured so far; a plain dict (keys version, records, timing, original) only
    in a checkpoint."""

    records: list[dict[str, Any]] = field(default_factory=list)  # one per model measured, in order
    timing: dict[str, Any] | None = None  # once the timed rounds are done
    original: dict[str, Any] | None = None  # the Step 1 network, with `original`

    @classmethod
    def from_checkpoint(cls, saved: Mapping[str, Any]) -> BenchmarkState:
        return cls(list(saved["records"]), saved["timing"], saved.get("original"))

    def to_checkpoint(self) -> dict[str, Any]:
        saved = {"version": STATE_VERSION, "records": self.records, "timing": self.timing}
        return saved if self.original is None else {**saved, "original": self.original}


def run(ctx: JobContext, params: dict[str, Any]) -> Any:
    p = parse(BenchmarkParams, params, "benchmark")
    refs = upstream.many(p.models, "models", EXAMPLE)
    candidates = list_models(refs)
    if not candidates:
        raise JobFailed(
            "the upstream jobs recorded no model files (model.pt or step-<k>.pt); "
            f"benchmark takes the outputs of train or prune stages, e.g. models: {EXAMPLE}",
            retry=False,
        )
    original_ref = None
    if p.original is not None:
        original_ref = upstream.single(p.original, "original", ORIGINAL_EXAMPLE)
        if "model.pt" not in (original_ref.get("artifacts") or {}):
            raise JobFailed(
                f"param 'original' refers to job {original_ref['job']} (stage {original_ref['stage']}), which "
                f"recorded no model.pt; it should name the Step 1 train stage, e.g. original: {ORIGINAL_EXAMPLE}",
                retry=False,
            )
    up = upstream.training(refs[0])
    data = load_dataset(
        upstream.pick(p.dataset, up["dataset"]),
        data_dir=p.data_dir or ctx.options.get("data_dir"),
        state_dir=ctx.state_dir,
        # the same subsets as upstream: `synthetic` draws its test set after its training set
        train_subset=up["train_subset"],
        test_subset=upstream.pick(p.test_subset, up["test_subset"]),
    )
    saved = ctx.restore()
    state = BenchmarkState() if saved is None else BenchmarkState.from_checkpoint(saved)
    if original_ref is not None and state.original is None:
        state.original = measure_original(ctx, p, original_ref, data)
        ctx.checkpoint(state.to_checkpoint())

    # -- every model: size, FLOPs, accuracy, matmul check ---------------------------------------
    done = {r["sha256"] for r in state.records}
    for i, cand in enumerate(candidates):
        if cand["sha256"] in done:
            continue
        if ctx.should_stop():
            ctx.checkpoint(state.to_checkpoint())
            return ctx.interrupted()
        ctx.progress(i / (len(candidates) + 1), f"measuring {cand['name']} ({i + 1}/{len(candidates)})")
        record = measure(ctx, p, cand, data)
        state.records.append(record)
        ctx.log_metrics(
            {"model_flops": record["flops"], "model_test_accuracy": record["test_accuracy"]},
            step=len(state.records) - 1,
        )
        ctx.checkpoint(state.to_checkpoint())
    records = state.records
    bad = [r for r in records if not r["matmul_allclose"]]
    if bad:
        worst = max(bad, key=lambda r: r["matmul_max_abs_diff"])
        raise JobFailed(
            f"the matmul re-implementation differs from the nn modules on {len(bad)} model(s), "
            f"e.g. {worst['name']} by up to {worst['matmul_max_abs_diff']:.3g} (atol {p.atol:g}); this is a bug",
            retry=False,
        )

    front = pareto_front(records)
    for r in records:
        r["pareto"] = r["name"] in front
    selected = select(records, p.min_test_accuracy)

    # -- timing ---------------------------------------------------------------------------------
    if state.timing is None:
        timed = records if p.time_all else [selected or max(records, key=lambda r: r["test_accuracy"])]
        ctx.progress(len(candidates) / (len(candidates) + 1), f"timing {', '.join(r['name'] for r in timed)}")
        timing = time_models(ctx, p, timed, data, state.original)
        if timing is None:
            ctx.checkpoint(state.to_checkpoint())
            return ctx.interrupted()
        if selected is None:
            timing["note"] = (
                f"no model has test accuracy above {p.min_test_accuracy}; timed the most accurate one instead"
            )
        state.timing = timing
        ctx.checkpoint(state.to_checkpoint())
    timing = state.timing

    # -- outputs --------------------------------------------------------------------------------
    result = build_result(p, records, front, selected, timing, state.original)
    out = ctx.work_dir() / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=1) + "\n")
    ctx.log_artifact(out / "benchmark.json", "benchmark.json")
    ctx.log_artifact(plot_pareto(out / "pareto.png", records, front, selected, p.min_test_accuracy), "pareto.png")
    metrics = {k: v for k, v in timing["summary"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if selected is not None:
        metrics.update(selected_flops=selected["flops"], selected_test_accuracy=selected["test_accuracy"])
    metrics["models"] = len(records)
    ctx.log_metrics({k: float(v) for k, v in metrics.items()}, step=len(records))
    return result


# -- which models --------------------------------------------------------------------------------


def list_models(refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model file the upstream jobs recorded, in order, without duplicates (by sha256).

    A prune job lists its models in its result (`models`: step-0.pt is its input, then one per
    step); any other job contributes its model.pt.
    """
    stages = [r["stage"] for r in refs]
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for ref in refs:
        artifacts = ref.get("artifacts") or {}
        listed = (ref.get("metrics") or {}).get("models")
        if isinstance(listed, list) and listed:
            entries = [(m["name"], m.get("step")) for m in listed if isinstance(m, dict) and m.get("name")]
        else:
            entries = [("model.pt", None)]
        prefix = ref["stage"] if stages.count(ref["stage"]) == 1 else f"{ref['stage']}:{ref['job']}"
        for file, step in entries:
            info = artifacts.get(file)
            if not info or info.get("sha256") in seen:
                continue
            seen.add(info["sha256"])
            name = f"{prefix}/step-{step}" if step is not None else prefix
            out.append(
                {
                    "name": name,
                    "job": ref["job"],
                    "stage": ref["stage"],
                    "step": step,
                    "file": file,
                    "sha256": info["sha256"],
                    "ref": ref,
                }
            )
    return out


def measure(ctx: JobContext, p: BenchmarkParams, cand: dict[str, Any], data: Dataset) -> dict[str, Any]:
    path = ctx.fetch_artifact(cand["ref"], cand["file"])
    model = load_model(path).eval()
    cost = model_cost(model.arch, count_activation=p.count_activation)
    loss, acc = evaluate(model, data.test.x, data.test.y, p.eval_batch_size)
    diff = matmul_difference(model, data.test.x, p.eval_batch_size)
    return {
        "name": cand["name"],
        "job": cand["job"],
        "stage": cand["stage"],
        "step": cand["step"],
        "file": cand["file"],
        "sha256": cand["sha256"],
        "arch": model.arch.to_dict(),
        "architecture": model.arch.describe(),
        "flops": cost.flops,
        "macs": cost.macs,
        "params": count_params(model),
        "nonzero_params": magnitude.nonzero_params(model),
        "effective_macs": magnitude.effective_macs(model),
        "size_bytes": Path(path).stat().st_size,
        "param_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        "test_accuracy": acc,
        "test_loss": loss,
        "layers": {c.name: c.to_dict() for c in cost.layers},
        "matmul_max_abs_diff": diff,
        "matmul_allclose": diff <= p.atol,
    }


def measure_original(ctx: JobContext, p: BenchmarkParams, ref: dict[str, Any], data: Dataset) -> dict[str, Any]:
    """The Step 1 network: its size and accuracy here (it is timed later, beside the selected model)."""
    model = load_model(ctx.fetch_artifact(ref, "model.pt")).eval()
    _, acc = evaluate(model, data.test.x, data.test.y, p.eval_batch_size)
    return {
        "name": ref["stage"],
        "job": ref["job"],
        "stage": ref["stage"],
        "file": "model.pt",
        "sha256": ref["artifacts"]["model.pt"]["sha256"],
        "architecture": model.arch.describe(),
        "arch": model.arch.to_dict(),
        "flops": model_cost(model.arch, count_activation=p.count_activation).flops,
        "params": count_params(model),
        "test_accuracy": acc,
    }


@torch.inference_mode()
def matmul_difference(model: CNN, x: torch.Tensor, batch_size: int) -> float:
    """The largest |logit difference| between nn modules and matmul over all of x."""
    mm = MatmulCNN(model)
    worst = 0.0
    for xb in x.split(batch_size):
        worst = max(worst, float((model(xb) - mm(xb)).abs().max()))
    return worst


# -- selection -----------------------------------------------------------------------------------


def pareto_front(records: list[dict[str, Any]]) -> list[str]:
    """Names of the models no other model beats on both FLOPs (fewer) and accuracy (higher)."""
    front = []
    for r in records:
        dominated = any(
            o["flops"] <= r["flops"]
            and o["test_accuracy"] >= r["test_accuracy"]
            and (o["flops"] < r["flops"] or o["test_accuracy"] > r["test_accuracy"])
            for o in records
        )
        if not dominated:
            front.append(r["name"])
    return front


def select(records: list[dict[str, Any]], min_accuracy: float) -> dict[str, Any] | None:
    """The fewest FLOPs with test accuracy above min_accuracy; ties: more accurate, then earlier."""
    ok = [(i, r) for i, r in enumerate(records) if r["test_accuracy"] > min_accuracy]
    if not ok:
        return None
    return min(ok, key=lambda ir: (ir[1]["flops"], -ir[1]["test_accuracy"], ir[0]))[1]


# -- timing --------------------------------------------------------------------------------------


def time_models(
    ctx: JobContext,
    p: BenchmarkParams,
    timed: list[dict[str, Any]],
    data: Dataset,
    original: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """nn vs matmul per timed model, on CPU (and CUDA when present). None when asked to stop.

    The original (Step 1) network, when given, is timed with nn modules in the same rounds as the
    first timed model (the selected one), so its time and theirs see the same machine load.
    """
    original_model = load_model(ctx.fetch_artifact(_ref_of(original), original["file"])).eval() if original else None
    per_model = {}
    for i, r in enumerate(timed):
        model = load_model(ctx.fetch_artifact(_ref_of(r), r["file"])).eval()
        beside = original_model if i == 0 else None
        cpu = time_pair(ctx, p, model, data.test.x, torch.device("cpu"), r["name"], beside)
        if cpu is None:
            return None
        entry = {"cpu": cpu}
        if p.gpu and torch.cuda.is_available():
            gpu = time_pair(ctx, p, model, data.test.x, torch.device("cuda"), r["name"], beside)
            if gpu is None:
                return None
            entry["cuda"] = gpu
        per_model[r["name"]] = entry
    first = timed[0]["name"]
    cpu = per_model[first]["cpu"]
    summary: dict[str, Any] = {
        "model": first,
        "images": len(data.test),
        "batch_size": p.inference_batch_size,
        "threads": p.threads,
        "rounds": p.timing_rounds,
        "nn_median_s": cpu["nn"]["median_s"],
        "nn_iqr_s": cpu["nn"]["iqr_s"],
        "matmul_median_s": cpu["matmul"]["median_s"],
        "matmul_iqr_s": cpu["matmul"]["iqr_s"],
        "matmul_over_nn": cpu["matmul_over_nn"],
        "matmul_strategies": cpu["matmul_strategies"],
    }
    if "original_nn" in cpu and original is not None:
        summary.update(
            original_model=original["name"],
            original_nn_median_s=cpu["original_nn"]["median_s"],
            original_nn_iqr_s=cpu["original_nn"]["iqr_s"],
            matmul_over_original_nn=cpu["matmul"]["median_s"] / cpu["original_nn"]["median_s"],
        )
    gpu_entry = per_model[first].get("cuda")
    if gpu_entry is not None:
        summary.update(
            cuda_nn_median_s=gpu_entry["nn"]["median_s"],
            cuda_matmul_median_s=gpu_entry["matmul"]["median_s"],
            cuda_matmul_over_nn=gpu_entry["matmul_over_nn"],
            cuda_device=torch.cuda.get_device_name(0),
        )
        if "original_nn" in gpu_entry:
            summary["cuda_original_nn_median_s"] = gpu_entry["original_nn"]["median_s"]
    else:
        summary["cuda"] = (
            "skipped: CUDA is not available on this worker" if not torch.cuda.is_available() else "skipped: gpu: false"
        )
    summary["cpu"] = platform.processor() or platform.machine()
    summary["torch"] = torch.__version__
    return {"summary": summary, "models": per_model}


def _ref_of(record: dict[str, Any]) -> dict[str, Any]:
    # fetch_artifact needs the job and (for verification) the recorded sha256
    return {"job": record["job"], "artifacts": {record["file"]: {"sha256": record["sha256"]}}}


def time_pair(
    ctx: JobContext,
    p: BenchmarkParams,
    model: CNN,
    x: torch.Tensor,
    device: torch.device,
    name: str,
    original: CNN | None = None,
) -> dict[str, Any] | None:
    """Median and IQR of one pass over x in batches, nn modules vs matmul (and the original network
    with nn modules, when given), rounds interleaved."""
    model = model.to(device)
    if original is not None:
        original = original.to(device)
    mm = MatmulCNN(model).to(device)
    batches = [b.to(device) for b in x.split(p.inference_batch_size)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def nn_pass() -> None:
        with torch.inference_mode():
            for b in batches:
                model(b)
        sync()

    def matmul_pass() -> None:
        for b in batches:
            mm(b)
        sync()

    variants = [("nn", nn_pass), ("matmul", matmul_pass)]
    if original is not None:
        reference = original

        def original_pass() -> None:
            with torch.inference_mode():
                for b in batches:
                    reference(b)
            sync()

        variants.append(("original_nn", original_pass))

    timers = {
        variant: tbench.Timer(
            stmt="run()",
            globals={"run": fn},
            num_threads=p.threads,
            label=f"inference over {len(x)} images",
            sub_label=name,
            description=f"{variant} ({device.type})",
        )
        for variant, fn in variants
    }
    runs: dict[str, list[tbench.Measurement]] = {variant: [] for variant in timers}
    for i in range(p.timing_rounds):
        if ctx.should_stop():
            return None
        ctx.progress(None, f"timing {name} on {device.type}: round {i + 1}/{p.timing_rounds}")
        for variant, timer in timers.items():
            # min_run_time tiny: one warm-up pass, then one timed pass per round
            runs[variant].append(timer.blocked_autorange(min_run_time=1e-3))
    out: dict[str, Any] = {
        "device": device.type,
        "threads": p.threads,
        "batch_size": p.inference_batch_size,
        "matmul_strategies": "conv1 {}, conv2 {}".format(*mm.strategies),
    }
    for variant, ms in runs.items():
        merged = tbench.Measurement.merge(ms)[0]
        out[variant] = {  # plain floats: the checkpoint loads with weights_only=True (no numpy scalars)
            "median_s": float(merged.median),
            "iqr_s": float(merged.iqr),
            "times_s": [float(t) for t in merged.times],
        }
    out["matmul_over_nn"] = out["matmul"]["median_s"] / out["nn"]["median_s"]
    model.to("cpu")
    if original is not None:
        original.to("cpu")
    return out


# -- outputs -------------------------------------------------------------------------------------


def build_result(
    p: BenchmarkParams,
    records: list[dict[str, Any]],
    front: list[str],
    selected: dict[str, Any] | None,
    timing: dict[str, Any],
    original: dict[str, Any] | None = None,
) -> dict[str, Any]:
    fields = set(ModelRecord.model_fields)
    sel = None
    if selected is not None:
        sel = ModelRecord(**{k: v for k, v in selected.items() if k in fields and k not in ("layers", "pareto")})
    result = BenchmarkResult(
        models=[ModelRecord(**{k: v for k, v in r.items() if k in fields}) for r in records],
        pareto_front=front,
        min_test_accuracy=p.min_test_accuracy,
        selected=sel,
        selection=(
            f"fewest FLOPs among models with test accuracy > {p.min_test_accuracy}"
            if sel
            else f"no model has test accuracy above {p.min_test_accuracy}"
        ),
        flops_convention=(
            "per image; conv (2·n·k²−1+a)·f·H'·W', dense m·(2n−1+a); "
            + ("a = 2: bias add and ReLU" if p.count_activation else "a = 1: the bias add (= 2 × MACs)")
        ),
        matmul_allclose=all(r["matmul_allclose"] for r in records),
        timing=Timing(**timing["summary"]),
        timing_detail=timing["models"],
        test_images=timing["summary"]["images"],
        original=(
            OriginalModel(**{k: v for k, v in original.items() if k in OriginalModel.model_fields})
            if original
            else None
        ),
    )
    return result.to_dict()


def plot_pareto(
    path: Path, records: list[dict[str, Any]], front: list[str], selected: dict[str, Any] | None, floor: float
) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    stages = list(dict.fromkeys(r["stage"] for r in records))
    for stage in stages:
        rs = [r for r in records if r["stage"] == stage]
        ax.scatter([r["flops"] for r in rs], [r["test_accuracy"] for r in rs], s=28, alpha=0.75, label=stage)
    pts = sorted((r["flops"], r["test_accuracy"], r["name"]) for r in records if r["name"] in front)
    ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], "-", color="tab:red", lw=1, label="Pareto front")
    for x, y, name in pts:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6.5)
    ax.axhline(floor, ls="--", color="gray", lw=0.8, label=f"min test accuracy {floor:g}")
    if selected is not None:
        ax.scatter(
            [selected["flops"]],
            [selected["test_accuracy"]],
            s=240,
            marker="*",
            color="gold",
            edgecolor="black",
            zorder=5,
            label=f"selected: {selected['name']}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per image (analytic)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title("test accuracy against FLOPs: every pruned model", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
