"""A/B of the training hot path: jobs.ml.training.fit of this tree against another checkout, one run.

    git archive <base-commit> | tar -x -C /tmp/base
    python benchmarks/fit_ab.py --baseline /tmp/base [--images 6400] [--rounds 5]

Each round trains one epoch of the same Fashion-MNIST images (baseline net 16/16/100, batch 32,
1 thread, as a default worker runs) in a fresh process per tree, alternating which goes first.
Reported: median images per second of training compute (fit's train_s, wall clock) and per
CPU-second of the whole fit call (less distorted by other load on a shared machine), and the
ratio this tree / baseline. Writes benchmarks/results/fit_ab.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "fit_ab.json"

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from benchmarks.jobcontext import ScratchJob
from jobs.ml.data import SYSTEM_DIR, DataNotFound, load_dataset
from jobs.ml.model import Arch, Conv, build
from jobs.ml.training import LoopConfig, fit, make_optimizer
n = int(sys.argv[2])
try:
    data = load_dataset("fashion-mnist", data_dir=str(SYSTEM_DIR), train_subset=n, test_subset=500)
except DataNotFound:
    data = load_dataset("synthetic", train_subset=n, test_subset=500)
with tempfile.TemporaryDirectory() as tmp:
    job = ScratchJob(Path(tmp))
    model = build(Arch(Conv(16, 3), Conv(16, 3), 100), "xavier_uniform", 0)
    cfg = LoopConfig(epochs=1, batch_size=32, seed=0, checkpoint_every_s=1e9, target_train_acc=None)
    cpu = time.process_time()
    state = fit(job.context(), model, make_optimizer(model, 0.001, 0.9), data.train, data.test, cfg)
    cpu = time.process_time() - cpu  # the whole fit (its one evaluation and checkpoint too): the same work in both trees
    job.close()
train_s = state["train_s"] if isinstance(state, dict) else state.train_s  # a dict from a baseline before TrainState
print(json.dumps({"images_per_s": n / train_s, "images_per_cpu_s": n / cpu, "dataset": data.name}))
"""


def measure(tree: Path, images: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(images)], capture_output=True, text=True, check=True, cwd=tree
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, required=True, help="a checkout of the commit to compare against")
    ap.add_argument("--images", type=int, default=6400)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    trees = {"baseline": args.baseline.resolve(), "this": REPO}
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            samples[name].append(measure(trees[name], args.images))
            print(f"round {r + 1} {name}: {samples[name][-1]}", file=sys.stderr)
    med = {
        name: {key: statistics.median(s[key] for s in rows) for key in ("images_per_s", "images_per_cpu_s")}
        for name, rows in samples.items()
    }
    result = {
        "command": f"python benchmarks/fit_ab.py --baseline {args.baseline} --images {args.images} --rounds {args.rounds}",
        "images": args.images,
        "dataset": samples["this"][0]["dataset"],
        "median": med,
        "ratio_this_vs_baseline": {k: med["this"][k] / med["baseline"][k] for k in med["this"]},
        "rounds": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
