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
