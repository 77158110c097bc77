"""How tests/data/prune_state_v2.pt was made: checkpoints of `kind: prune` written by the code of
commit 4c09450 (jobs/kinds/prune.py before PruneState, when it kept its state as a plain dict),
and the results that code reached when it resumed them.

    git worktree add /tmp/old 4c09450 && cp tests/prunekit.py /tmp/old/tests/ && cd /tmp/old
    PYTHONPATH=$PWD python <this file> OUT.pt

(prunekit.py only calls prune.run, so it runs against either version.) Two cases, on the
upstream model of tests/prunekit.py:
  structured: conv1, 2 fine-tuning epochs and a control every step, stopped mid fine-tuning of
      step 1, resumed, stopped again mid control fine-tuning of step 2: the checkpoint has a
      recorded step, a pending step, both fine-tunings, the control and a `resumes` entry;
  magnitude: amounts 0.5 and 0.8 of every layer, 1 epoch, stopped mid fine-tuning of step 2:
      the checkpoint has the input model and the pending step's masks.
Each case holds the params (the hand-off included), the checkpoint as ctx.restore() returned it,
the result of resuming it to the end with that code, and the weights of its result model.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from jobs.ml.model import load_model
from tests.onejob import Job
from tests.prunekit import attempt, resume_elsewhere, upstream_model

FAST = {"checkpoint_every_s": 0.0001, "log_every": 2, "eval_batch_size": 50}


def mid(which: str, step: int, epoch: int | None = None):
    def when(state: dict) -> bool:
        pending, ft = state.get("pending"), state.get(which)
        return bool(pending and ft and pending["step"] == step and ft["batch"] > 0) and (
            epoch is None or ft["epoch"] == epoch
        )

    return when


def case(root: Path, params: dict, stops: list) -> dict:
    job = Job(root / "job")
    params = {**params, "model": upstream_model(job)}
    for stop in stops:
        result = attempt(job, params, stop)
        assert type(result).__name__ == "Interrupted", result
    checkpoint = job.attempt().restore()
    job.db.dispose()
    result, model = resume_elsewhere(root / "resumed", checkpoint, params)
    return {"params": params, "checkpoint": checkpoint, "result": result, "model": load_model(model).state_dict()}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        structured = {"layer": "conv1", "finetune_epochs": 2, "max_step_drop": 1.0, "max_steps": 3,
                      "control_stop_gain": None, **FAST}  # fmt: skip
        magnitude = {"method": "magnitude", "layer": "all", "amounts": [0.5, 0.8], "finetune_epochs": 1, **FAST}
        cases = {
            "structured": case(root / "s", structured, [mid("finetune", 1, 1), mid("control_finetune", 2)]),
            "magnitude": case(root / "m", magnitude, [mid("finetune", 2)]),
        }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    torch.save({"torch": str(torch.__version__), "commit": commit, "cases": cases}, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
