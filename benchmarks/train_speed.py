"""Training speed of `kind: train` on real Fashion-MNIST, against the seed's naive loop, in one run.

    python benchmarks/train_speed.py                  # everything (~15 min on 2 shared cores)
    python benchmarks/train_speed.py --parts side     # one part: variants, side, target

Writes benchmarks/results/train_speed.json. Three parts:

variants  What makes the step fast on 1-2 threads, measured rather than guessed: the baseline net
          (16/16/100) at batch 8 and 32 with one setting changed at a time (threads, channels-last,
          oneDNN off, torch.optim.SGD plain/foreach/fused instead of our SGD step, fancy indexing
          instead of index_select into a buffer).
          Rounds are interleaved; reported are the median images per wall-second and per
          CPU-second (CPU time is what contention on a shared machine distorts least).
side      Side by side: the naive loop the seed's authors wrote (torchvision FashionMNIST with
          ToTensor + Normalize, a shuffling DataLoader, default threads) against our loop
          (jobs.ml.training.fit on the in-memory tensors, with a real JobContext and checkpoint
          store), same net (16/16/100), same hyperparameters (SGD lr 0.001 momentum 0.9), at batch
          8, 32 and 64, over a fixed number of images after a warm-up, rounds interleaved. Ours runs
          at 1 thread (what `sweeper work --workers 2` gives each process on 2 cores) and at 2; the
          naive loop also runs at 1 thread, to separate the loop's gain from the thread setting's.
target    The seed's fastest config (conv 3x3x8, conv 3x3x8, dense 100, lr 0.001, momentum 0.9,
          batch 32) as a real job: `sweeper work` with MLflow tracking on, the full 60k training
          set, stop_at_target, default checkpoint interval (30 s). Reports time_to_target_s, its
          test accuracy, the checkpoint overhead (time writing checkpoints, MLflow flushes
          included, over training time) and the worker's peak RSS (getrusage of the child).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.jobcontext import ScratchJob  # noqa: E402
from jobs.ml.data import SYSTEM_DIR, load_dataset  # noqa: E402
from jobs.ml.model import Arch, Conv, build  # noqa: E402
from jobs.ml.training import LoopConfig, fit, make_optimizer  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "train_speed.json"
BASELINE = Arch(Conv(16, 3), Conv(16, 3), 100)
FASTEST = Arch(Conv(8, 3), Conv(8, 3), 100)
DEFAULT_THREADS = torch.get_num_threads()  # before anything here changes it: what the naive loop gets


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- variants ---------------------------------------------------------------------------------


def variant_step(name: str, x: torch.Tensor, y: torch.Tensor, bs: int) -> Callable[[], None]:
    """One training step of the baseline net with one setting changed from ours."""
    model = build(BASELINE, "xavier_uniform", 0)
    if name == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    opt: Any = make_optimizer(model, 0.001, 0.9)
    if name.startswith("torch_sgd"):
        kw = {
            "torch_sgd": {"foreach": False},
            "torch_sgd_foreach": {"foreach": True},
            "torch_sgd_fused": {"fused": True},
        }
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, **kw[name])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    xbuf, ybuf = torch.empty((bs, 1, 28, 28)), torch.empty(bs, dtype=torch.int64)
    pos = [0]

    def step() -> None:
        i = pos[0]
        pos[0] = (i + 1) % (len(y) // bs)
        idx = order[i * bs : (i + 1) * bs]
        if name == "fancy_indexing":
            xb, yb = x[idx], y[idx]
        else:
            xb = torch.index_select(x, 0, idx, out=xbuf)
            yb = torch.index_select(y, 0, idx, out=ybuf)
        if name == "channels_last":
            xb = xb.contiguous(memory_format=torch.channels_last)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        int((logits.argmax(1) == yb).sum())
        loss.item()

    return step


def run_variants(x: torch.Tensor, y: torch.Tensor, rounds: int) -> dict[str, Any]:
    names = [
        "ours",
        "threads_2",
        "channels_last",
        "onednn_off",
        "torch_sgd",
        "torch_sgd_foreach",
        "torch_sgd_fused",
        "fancy_indexing",
    ]
    out: dict[str, Any] = {}
    for bs in (8, 32):
        steps = {n: variant_step(n, x, y, bs) for n in names}
        images = 1600 if bs == 8 else 3200
        wall: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds + 1):  # round 0 warms up
            for n in names:
                torch.set_num_threads(2 if n == "threads_2" else 1)
                torch.backends.mkldnn.enabled = n != "onednn_off"
                t, c = time.perf_counter(), time.process_time()
                for _ in range(images // bs):
                    steps[n]()
                if r:
                    wall[n].append(images / (time.perf_counter() - t))
                    cpu[n].append(images / (time.process_time() - c))
        torch.backends.mkldnn.enabled = True
        out[f"batch_{bs}"] = {
            n: {
                "images_per_s": median(wall[n]),
                "images_per_cpu_s": median(cpu[n]),
                "vs_ours_cpu": median(cpu[n]) / median(cpu["ours"]),
            }
            for n in names
        }
        for n in names:
            print(f"  variants batch {bs:>2} {n:<15} {median(wall[n]):7.0f} img/s  {median(cpu[n]):7.0f} img/cpu-s")
    return out


# -- side by side -------------------------------------------------------------------------------


def torchvision_root(tmp: Path, source: Path) -> Path:
    """torchvision's FashionMNIST wants the uncompressed files under root/FashionMNIST/raw."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in source.glob("*-ubyte.gz"):
        with gzip.open(gz) as src, open(raw / gz.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return tmp


def naive_loop(root: Path, bs: int, images: int, warmup: int, threads: int = DEFAULT_THREADS) -> float:
    """The seed's loop, as the assignment's notebooks write it. Returns images per second."""
    import torchvision
    from torch import nn, optim
    from torchvision import transforms

    torch.set_num_threads(threads)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    trainset = torchvision.datasets.FashionMNIST(str(root), train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(trainset, batch_size=bs, shuffle=True)
    model = build(BASELINE, "xavier_uniform", 0)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    running_loss, correct, total = 0.0, 0, 0
    batches = images // bs
    started = 0.0
    for i, (inputs, labels) in enumerate(loader):
        if i == warmup:
            started = time.perf_counter()
        if i == warmup + batches:
            break
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        _, predicted = torch.max(outputs.data, 1)
        total += labels.size(0)
        correct += (predicted == labels).sum().item()
    return batches * bs / (time.perf_counter() - started)


def our_loop(data: Any, bs: int, images: int, warmup: int, threads: int, scratch: Path) -> float:
    """jobs.ml.training.fit over exactly `images` images (one epoch of that subset), after a warm-up epoch."""
    from jobs.ml.data import Split

    torch.set_num_threads(threads)
    job = ScratchJob(scratch)
    try:
        model = build(BASELINE, "xavier_uniform", 0)
        opt = make_optimizer(model, 0.001, 0.9)
        warm = Split(data.train.x[: warmup * bs], data.train.y[: warmup * bs])
        fit(job.context(), model, opt, warm, None, LoopConfig(epochs=1, batch_size=bs, seed=0))
        subset = Split(data.train.x[:images], data.train.y[:images])
        job2 = ScratchJob(scratch / "timed")
        try:
            started = time.perf_counter()
            fit(job2.context(), model, opt, subset, None, LoopConfig(epochs=1, batch_size=bs, seed=1))
            return images / (time.perf_counter() - started)
        finally:
            job2.close()
    finally:
        job.close()


def run_side(data: Any, source: Path, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(Path(tmp) / "tv", source)
        for bs in (8, 32, 64):
            images = {8: 1600, 32: 3200, 64: 6400}[bs]
            warmup = 20
            runs: dict[str, list[float]] = {
                "naive": [],
                "naive_1_thread": [],
                "ours_1_thread": [],
                "ours_2_threads": [],
            }
            for r in range(rounds):
                runs["naive"].append(naive_loop(root, bs, images, warmup))
                runs["naive_1_thread"].append(naive_loop(root, bs, images, warmup, threads=1))
                runs["ours_1_thread"].append(our_loop(data, bs, images, warmup, 1, Path(tmp) / f"o1-{bs}-{r}"))
                runs["ours_2_threads"].append(our_loop(data, bs, images, warmup, 2, Path(tmp) / f"o2-{bs}-{r}"))
            row = {k: {"images_per_s": median(v), "runs": v} for k, v in runs.items()}
            row["ratio_1_thread"] = median(runs["ours_1_thread"]) / median(runs["naive"])
            row["ratio_2_threads"] = median(runs["ours_2_threads"]) / median(runs["naive"])
            # the loop alone, at equal threads: what in-memory batches buy without the thread setting
            row["ratio_1_thread_vs_naive_1_thread"] = median(runs["ours_1_thread"]) / median(runs["naive_1_thread"])
            row["images_timed"] = images
            out[f"batch_{bs}"] = row
            print(
                f"  side batch {bs:>2}: naive {median(runs['naive']):6.0f} img/s ({DEFAULT_THREADS} threads), ours "
                f"{median(runs['ours_1_thread']):6.0f} (1 thread, x{row['ratio_1_thread']:.2f}) "
                f"{median(runs['ours_2_threads']):6.0f} (2 threads, x{row['ratio_2_threads']:.2f}); naive at 1 thread "
                f"{median(runs['naive_1_thread']):6.0f} (ours/naive at 1 thread x{row['ratio_1_thread_vs_naive_1_thread']:.2f})"
            )
    return out


# -- time to target, checkpoint overhead, peak RSS (one real job) ----------------------------


def run_target(source: Path, max_epochs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "grid.yaml"
        grid.write_text(
            textwrap.dedent(f"""
            sweep: speed
            stages:
              fastest:
                kind: train
                params:
                  conv1: {{channels: 8, kernel: 3}}
                  conv2: {{channels: 8, kernel: 3}}
                  dense: 100
                  lr: 0.001
                  momentum: 0.9
                  batch_size: 32
                  init: xavier_uniform
                  seed: 0
                  max_epochs: {max_epochs}
                  stop_at_target: true
            """)
        )
        state = Path(tmp) / "state"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cli = [sys.executable, "-m", "sweeper.cli"]
        subprocess.run([*cli, "enqueue", str(grid), "--state", str(state)], check=True, env=env, capture_output=True)
        started = time.perf_counter()
        # A small launcher forks the worker: a child forked straight from this (large) process would
        # start its RSS high-water mark at ours. The launcher prints the worker's peak RSS (KiB).
        launcher = (
            "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
        )
        work = [*cli, "work", "--state", str(state), "--data-dir", str(source), "--threads-per-worker", "1"]
        proc = subprocess.run([sys.executable, "-c", launcher, *work], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"worker failed:\n{proc.stderr[-3000:]}")
        peak_kb = int(proc.stdout.strip().splitlines()[-1])
        import sqlalchemy as sa

        engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
        with engine.connect() as conn:
            status, result = conn.execute(sa.text("select status, result from jobs")).one()
        engine.dispose()
        if status != "done":
            raise SystemExit(f"job ended {status}:\n{proc.stderr[-3000:]}")
        result = json.loads(result) if isinstance(result, str) else result
    out = {
        "config": "conv 3x3x8, conv 3x3x8, dense 100, lr 0.001, momentum 0.9, batch 32, xavier_uniform, seed 0",
        "threads": 1,
        "time_to_target_s": result["time_to_target_s"],
        "reached": result["reached"],
        "target_step": result["target_step"],
        "epochs_at_target": result["epochs"],
        "test_accuracy_at_target": result["test_accuracy"],
        "train_accuracy_at_target": result["train_accuracy"],
        "total_train_s": result["total_train_s"],
        "images_per_s": result["images_per_s"],
        "checkpoints": result["checkpoints"],
        "checkpoint_s": result["checkpoint_s"],
        "checkpoint_overhead": result["checkpoint_s"] / result["total_train_s"],
        "eval_s": result["eval_s"],
        "job_wall_s": wall,
        "worker_peak_rss_mb": peak_kb / 1024,
        "seed_report": {"time_to_target_s": 305, "test_accuracy": 0.886, "machine": "Google Colab CPU"},
    }
    print(
        f"  target: {out['time_to_target_s']:.1f} s of training to 90% running train accuracy "
        f"({out['epochs_at_target']:.2f} epochs), test accuracy {out['test_accuracy_at_target']:.4f}; "
        f"checkpoints {out['checkpoint_overhead'] * 100:.2f}% of training time; "
        f"worker peak RSS {out['worker_peak_rss_mb']:.0f} MB"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="variants,side,target", help="comma-separated: variants, side, target")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (median)")
    parser.add_argument("--data-dir", type=Path, default=SYSTEM_DIR, help="Fashion-MNIST IDX .gz files")
    parser.add_argument("--max-epochs", type=int, default=30, help="cap for the time-to-target job")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}

    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.update(
        {
            "benchmark": "train_speed",
            "command": "python benchmarks/train_speed.py [--parts variants,side,target]",
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "torch": torch.__version__,
                "default_threads": DEFAULT_THREADS,
                "shared": "yes: other engineers' tests ran on the same 2 cores; see load averages",
                "load_average_at_start": os.getloadavg(),
            },
        }
    )
    data = load_dataset("fashion-mnist", data_dir=args.data_dir)

    def stamp(section: dict[str, Any]) -> dict[str, Any]:
        # Parts may be re-run alone; each keeps when it ran and how loaded the machine was.
        section["measured"] = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average": os.getloadavg()}
        return section

    if "variants" in parts:
        print("variants (baseline 16/16/100; one setting changed at a time from ours)")
        report["variants"] = stamp(run_variants(data.train.x, data.train.y, args.rounds))
    if "side" in parts:
        print(f"side by side (baseline 16/16/100, SGD lr 0.001 momentum 0.9; naive at {DEFAULT_THREADS} threads)")
        report["side_by_side"] = stamp(run_side(data, args.data_dir, args.rounds))
    if "target" in parts:
        print("time to 90% train accuracy (real job, full training set)")
        report["time_to_target"] = stamp(run_target(args.data_dir, args.max_epochs))
    report["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
