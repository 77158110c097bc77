"""GPU check: what tests/test_device.py promises, on a real GPU, and CPU vs CUDA training speed.

    python benchmarks/gpu_check.py              # writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --cpu-only   # the same code with the CPU on both sides (a dry run)

Without CUDA it writes {"cuda": "not measured: no GPU"} and exits 0. With CUDA:

checks  through a real JobContext and checkpoint store (benchmarks/jobcontext.py):
        - cuda -> cpu and cpu -> cuda: a job stopped mid-epoch on one device resumes on the other
          with exactly the saved weights, and finishes; the checkpoint file holds CPU tensors only
        - cuda -> cuda: stopped and resumed is bit-identical to an uninterrupted run
          (jobs.ml.device.job_numerics: deterministic algorithms, no TF32; CUBLAS_WORKSPACE_CONFIG)
speed   jobs.ml.training.fit on the baseline net (conv 3x3x16, conv 3x3x16, dense 100), SGD lr 1e-3
        momentum 0.9, at batch 32 and 256, over the same images on the CPU (1 thread, as a default
        worker runs, and all cores) and on CUDA; training compute only (fit's train_s), rounds
        interleaved, median; ratios against CPU at 1 thread measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.jobcontext import ScratchJob  # noqa: E402
from jobs.ml.data import SYSTEM_DIR, DataNotFound, load_dataset  # noqa: E402
from jobs.ml.device import job_numerics, on_device, pick_device  # noqa: E402
from jobs.ml.model import Arch, Conv, build  # noqa: E402
from jobs.ml.training import LoopConfig, TrainState, evaluate, fit, make_optimizer  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "gpu_check.json"
BASELINE = Arch(Conv(16, 3), Conv(16, 3), 100)


def data(train: int, test: int) -> Any:
    try:
        return load_dataset("fashion-mnist", data_dir=str(SYSTEM_DIR), train_subset=train, test_subset=test)
    except DataNotFound:
        return load_dataset("synthetic", train_subset=train, test_subset=test)


def attempt(job: ScratchJob, cpu_data: Any, device: str, cfg: LoopConfig, stop_after: int | None, seed: int) -> Any:
    ctx = job.context()
    dev = pick_device(device)
    d = on_device(cpu_data, dev)
    model = build(BASELINE, "xavier_uniform", seed).to(dev)
    optimizer = make_optimizer(model, 0.01, 0.9)
    if stop_after == 0:
        ctx.request_stop()
    steps = [0]

    def count(_m: torch.nn.Module) -> None:
        steps[0] += 1
        if stop_after is not None and steps[0] == stop_after:
            ctx.request_stop()

    with job_numerics(dev):  # as kind train: deterministic, no TF32 on a GPU, for this fit only
        result = fit(ctx, model, optimizer, d.train, d.test, cfg, checkpoint=ctx.restore(), after_step=count)
    return model, d, result


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def check_pair(root: Path, cpu_data: Any, first: str, second: str) -> dict[str, Any]:
    cfg = LoopConfig(epochs=2, batch_size=32, seed=1, checkpoint_every_s=1e9, target_train_acc=None)
    job = ScratchJob(root / f"{first}-{second}")
    model, _, _ = attempt(job, cpu_data, first, cfg, stop_after=min(17, len(cpu_data.train) // 64), seed=0)
    saved = weights(model)
    newest = max((job.state_dir / "checkpoints").rglob("*.ckpt"), key=lambda p: p.name)
    raw = torch.load(newest, weights_only=True)  # no map_location: must load as saved
    cpu_only = all(t.device.type == "cpu" for t in raw["model"].values())
    model, _, _ = attempt(job, cpu_data, second, cfg, stop_after=0, seed=99)
    same = all(torch.equal(v, saved[k]) for k, v in weights(model).items())
    model, d, state = attempt(job, cpu_data, second, cfg, stop_after=None, seed=5)
    finished = isinstance(state, TrainState) and state.epoch == cfg.epochs
    _, acc = evaluate(model, d.test.x, d.test.y)
    out: dict[str, Any] = {"checkpoint_cpu_only": cpu_only, "same_weights_after_handover": same}
    out.update(finished=finished, test_accuracy=acc)
    ref_model, d, _ = attempt(ScratchJob(root / f"ref-{first}-{second}"), cpu_data, second, cfg, None, 0)
    _, ref_acc = evaluate(ref_model, d.test.x, d.test.y)
    out["uninterrupted_test_accuracy"] = ref_acc
    out["bit_identical_to_uninterrupted"] = all(
        torch.equal(v, weights(model)[k]) for k, v in weights(ref_model).items()
    )
    job.close()
    out["ok"] = cpu_only and same and finished and (first != second or out["bit_identical_to_uninterrupted"])
    return out


def speed(cpu_data: Any, device: str, threads: int, batch: int) -> float:
    """Images per second of training compute (fit's train_s) over one epoch of cpu_data."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        job = ScratchJob(Path(tmp))
        cfg = LoopConfig(epochs=1, batch_size=batch, seed=0, checkpoint_every_s=1e9, target_train_acc=None)
        _, _, state = attempt(job, cpu_data, device, cfg, stop_after=None, seed=0)
        job.close()
    return len(cpu_data.train) / state.train_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-only", action="store_true", help="run every part with the CPU standing in for CUDA")
    ap.add_argument("--images", type=int, default=12_800, help="training images per speed measurement")
    ap.add_argument("--check-images", type=int, default=2_000, help="training images of the resume checks")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    result: dict[str, Any] = {
        "command": "python benchmarks/gpu_check.py" + (" --cpu-only" if args.cpu_only else ""),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cores": cores,
    }
    gpu = "cpu" if args.cpu_only else "cuda"
    if not args.cpu_only and not torch.cuda.is_available():
        result["cuda"] = "not measured: no GPU"
    else:
        if not args.cpu_only:
            result["cuda"] = {"device": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
        else:
            result["cuda"] = "not measured: --cpu-only (the CPU stands in for CUDA)"
        small = data(args.check_images, 1_000)
        with tempfile.TemporaryDirectory() as tmp:
            pairs = ((gpu, "cpu"), ("cpu", gpu), (gpu, gpu))
            result["checks"] = {
                f"{a}->{b}": check_pair(Path(tmp) / str(i), small, a, b) for i, (a, b) in enumerate(pairs)
            }
        big = data(args.images, 1_000)
        settings = [("cpu", 1), ("cpu", cores), (gpu, cores)]
        table: dict[str, Any] = {}
        for batch in (32, 256):
            samples: dict[str, list[float]] = {f"{d}x{t}": [] for d, t in settings}
            for r in range(args.rounds + 1):  # round 0 warms up (CUDA context, kernels)
                for d, t in settings:
                    ips = speed(big, d, t, batch)
                    if r:
                        samples[f"{d}x{t}"].append(ips)
            base = statistics.median(samples["cpux1"])
            table[f"batch_{batch}"] = {
                ("cuda" if k.startswith(gpu) and k.endswith(f"x{cores}") and not args.cpu_only else k): {
                    "images_per_s": statistics.median(v),
                    "vs_cpu_1_thread": statistics.median(v) / base,
                    "rounds": v,
                }
                for k, v in samples.items()
            }
        result["speed"] = {"images": args.images, "net": BASELINE.describe(), "threads_key": "device x threads"}
        result["speed"].update(table)
        result["ok"] = all(c["ok"] for c in result["checks"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
