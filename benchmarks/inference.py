"""Inference over the Fashion-MNIST test set: nn modules against matmul-only re-implementations.

    python benchmarks/inference.py [--images 10000] [--batch-size 32] [--threads 1] [--rounds 3] [--arch 5x5]

Writes benchmarks/results/inference.json. For each architecture (random weights: time does not
depend on their values) one pass over the test set in batches of 32 is timed for:

    nn           nn.Conv2d / nn.Linear under torch.inference_mode: the baseline
    seed_unfold  the seed report's re-implementation: F.unfold (im2col, NCHW), matmul, bias add,
                 reshape, per layer (they measured 2.99 s against 1.62 s: 1.85x)
    previous     jobs/ml/matmul.py before blocking: "auto" as it was (im2col on the whole batch, or
                 shifted for 3×3 on >= 4 channels): the "before" of BENCHMARKS.md
    im2col       jobs/ml/matmul.py, strategy im2col: CNHW layout, one strided patch view per block of
                 images sized to stay in L2 (BLOCK_BYTES), one GEMM per block
    rows         jobs/ml/matmul.py, strategy rows: patches over (channel, kernel row) per block of
                 images, k GEMMs over the kernel's column shifts (a k times smaller patch matrix)
    shifted      jobs/ml/matmul.py, strategy shifted: k·k GEMMs on shifted views, no patch copy
    auto         jobs/ml/matmul.py as the benchmark job uses it (shifted for 3×3 on >= 4 channels,
                 blocked im2col otherwise)

Every variant is first checked allclose to nn on all the images. Timing uses
torch.utils.benchmark at a fixed thread count; rounds are interleaved (nn, seed_unfold, ...,
nn, ..., in a fresh random order each round) so that load from other processes on a shared
machine hits every variant alike. Each
measurement is one warm-up pass and one timed pass. Reported: median and IQR per variant, and
each variant's median over nn's median (the ratio is what to compare across machines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark as tbench

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.ml.data import load_dataset  # noqa: E402
from jobs.ml.matmul import ConvGemm, MatmulCNN  # noqa: E402
from jobs.ml.model import CNN, Arch, Conv, build  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "inference.json"
ARCHS = {
    "baseline 16/16/100 (step 1)": Arch(Conv(16, 3), Conv(16, 3), 100),
    "report's best 5x5 16/32/100": Arch(Conv(16, 5), Conv(32, 5), 100),
    "report's step-2 model 8/8/100": Arch(Conv(8, 3), Conv(8, 3), 100),
    "report's selected pruned 1/2/98": Arch(Conv(1, 3), Conv(2, 3), 98),
}
UNBLOCKED = 1 << 62  # block_bytes: the whole batch in one patch matrix, as before blocking


class SeedUnfold:
    """The seed's approach: unfold to (N, C·k·k, L), matmul, add bias, reshape; NCHW throughout."""

    def __init__(self, model: CNN) -> None:
        self.layers = []
        for conv in (model.conv1, model.conv2):
            f = conv.weight.shape[0]
            self.layers.append((conv.weight.detach().reshape(f, -1), conv.bias.detach(), conv.weight.shape[-1]))
        self.fc = [(m.weight.detach(), m.bias.detach()) for m in (model.fc1, model.fc2)]

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for w, b, k in self.layers:
            n, _, h, wd = x.shape
            cols = F.unfold(x, k)  # (N, C·k·k, L): a copy
            x = torch.relu(torch.matmul(w, cols) + b[:, None]).view(n, -1, h - k + 1, wd - k + 1)
        x = x.flatten(1)
        (w3, b3), (w4, b4) = self.fc
        x = torch.relu(torch.matmul(x, w3.t()) + b3)
        return torch.matmul(x, w4.t()) + b4


def variants(model: CNN) -> dict:
    model.eval()

    def nn_forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return {
        "nn": nn_forward,
        "seed_unfold": SeedUnfold(model),
        "previous": previous(model),
        "im2col": MatmulCNN(model, "im2col"),
        "rows": MatmulCNN(model, "rows"),
        "shifted": MatmulCNN(model, "shifted"),
        "auto": MatmulCNN(model, "auto"),
    }


def previous(model: CNN) -> MatmulCNN:
    """The matmul version before blocking: im2col on the whole batch, or shifted for 3×3 on >= 4 channels."""
    mm = MatmulCNN(model, "im2col", block_bytes=UNBLOCKED)
    arch = model.arch
    for name in ("conv1", "conv2"):
        conv = getattr(model, name)
        _, c, k, _ = conv.weight.shape
        if k <= 3 and c >= 4:
            setattr(mm, name, ConvGemm(conv.weight, conv.bias, arch.padding, arch.pool, "shifted"))
    return mm


def model_for(arch: Arch) -> CNN:
    model = build(arch, "xavier_uniform", 0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.1, 0.1)  # non-zero biases, as after training
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000, help="test images per pass (10000: all of them)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurements per variant")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--seed", type=int, default=0, help="for the order of variants within each round")
    ap.add_argument("--arch", action="append", help="only the architectures whose label contains this (repeatable)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", data_dir=args.data_dir, train_subset=1, test_subset=args.images)
    x = data.test.x
    batches = list(x.split(args.batch_size))
    load_before = os.getloadavg()
    started = time.time()
    results = {}
    order = random.Random(args.seed)
    for label, arch in ARCHS.items():
        if args.arch and not any(a in label for a in args.arch):
            continue
        model = model_for(arch)
        fns = variants(model)
        with torch.inference_mode():
            want = torch.cat([model(b) for b in x.split(1000)])
        for name, fn in fns.items():
            got = torch.cat([fn(b) for b in x.split(1000)])
            diff = float((got - want).abs().max())
            if diff > 1e-3:
                raise SystemExit(f"{label}: {name} differs from nn by {diff}")

        def one_pass(fn=None) -> None:
            for b in batches:
                fn(b)

        timers = {
            name: tbench.Timer(
                stmt="one_pass(fn)",
                globals={"one_pass": one_pass, "fn": fn},
                num_threads=args.threads,
                label=label,
                description=name,
            )
            for name, fn in fns.items()
        }
        measured: dict[str, list] = {name: [] for name in fns}
        for r in range(args.rounds):
            for name in order.sample(list(timers), len(timers)):
                timer = timers[name]
                measured[name].append(timer.blocked_autorange(min_run_time=1e-3))
            print(f"{label}: round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        per = {}
        for name, ms in measured.items():
            m = tbench.Measurement.merge(ms)[0]
            per[name] = {"median_s": float(m.median), "iqr_s": float(m.iqr), "times_s": [float(t) for t in m.times]}
        base = per["nn"]["median_s"]
        for v in per.values():
            v["ratio_vs_nn"] = v["median_s"] / base
            # paired: each round's time over nn's time in the same round, then the median
            v["paired_ratio_vs_nn"] = statistics.median(
                t / b for t, b in zip(v["times_s"], per["nn"]["times_s"], strict=True)
            )
        results[label] = {
            "arch": arch.to_dict(),
            "strategies_auto": list(fns["auto"].strategies),
            "variants": per,
        }
        print(
            f"{label:34s} nn {base:6.3f}s  "
            + "  ".join(f"{n} {v['ratio_vs_nn']:.2f}x" for n, v in per.items() if n != "nn"),
            flush=True,
        )
    out = {
        "benchmark": "inference over the Fashion-MNIST test set, nn modules vs matmul-only",
        "command": "python benchmarks/inference.py " + " ".join(sys.argv[1:]),
        "images": len(x),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "rounds": args.rounds,
        "baseline": "nn (nn.Conv2d/nn.Linear, torch.inference_mode), measured in the same run, interleaved",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "blas": "MKL" if torch.backends.mkl.is_available() else "other",
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cuda": torch.cuda.is_available(),
            "shared": "yes: a 2-core machine shared with other engineers' test runs; load average "
            f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        },
        "wall_s": time.time() - started,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
