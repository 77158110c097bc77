"""Job kinds for the fault tests (`kind: tests.chaos.kinds:NAME`, the user-code path)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sweeper.context import JobContext, JobFailed


def gated(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Says it started (<gate>.started), waits for the file <gate>, then restores and checkpoints.

    Lets a test cut the database between the claim and the job's first read of its checkpoints.
    """
    gate = Path(params["gate"])
    Path(f"{gate}.started").write_text(str(ctx.attempt))
    deadline = time.monotonic() + 120
    while not gate.exists():
        if time.monotonic() > deadline:
            raise JobFailed(f"gate {gate} never opened")
        time.sleep(0.05)
    state = ctx.restore() or {"step": 0}
    ctx.checkpoint({"step": state["step"] + 1})
    return {"step": state["step"] + 1, "attempt": ctx.attempt}


def tail_gated(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Logs a point after its last checkpoint; the first attempt then waits for the file <gate>.

    A worker frozen there is a zombie in its tail: the point it holds was never checkpointed.
    """
    gate = Path(params["gate"])
    ctx.log_metrics({"x": 1.0}, step=1)
    ctx.checkpoint({"step": 1})
    ctx.log_metrics({"x": 2.0}, step=2)
    if ctx.attempt == 1:
        Path(f"{gate}.started").write_text("1")
        deadline = time.monotonic() + 120
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return {"attempt": ctx.attempt}


class _RunsACommand:
    """Pickles to a call of os.system: loading it with plain pickle would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (self.command,))


def crafted_pickle(marker: str) -> bytes:
    """A torch file whose unpickling runs `touch MARKER`: what a weights_only load must refuse."""
    import io
    import pickle

    import torch

    buf = io.BytesIO()
    torch.save({"arch": {}, "state_dict": _RunsACommand(f"touch {marker}")}, buf, pickle_module=pickle)
    return buf.getvalue()


def evil_model(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """An upstream job that records a crafted model.pt (sha256 and all) for a prune job to fetch."""
    path = ctx.work_dir() / "model.pt"
    path.write_bytes(crafted_pickle(params["marker"]))
    ctx.log_artifact(path, "model.pt")
    return {"test_accuracy": 0.5}
