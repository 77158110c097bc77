"""`kind: noop`: a job that does (almost) nothing, for tests, benchmarks and chaos runs.

It steps `steps` times, sleeping `step_s` each step, checkpointing a counter, and logging one
metric point per step. With `counter_dir` it appends one line to `<counter_dir>/<job_id>` when it
finishes: a side effect that tests count to prove a job ran exactly once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from jobs.kinds.params import NoopParams
from sweeper.context import JobContext, JobFailed


def run(ctx: JobContext, params: dict[str, Any]) -> Any:
    p = NoopParams.model_validate(params)
    if p.fail:
        raise RuntimeError(f"noop job {ctx.job_id} was asked to fail (fail: true)")
    if ctx.attempt <= p.fail_times:
        raise RuntimeError(f"noop job {ctx.job_id}: failing attempt {ctx.attempt} of {p.fail_times} (fail_times)")
    if p.bad_param:
        raise JobFailed(f"noop job {ctx.job_id}: bad_param is set; this can never succeed", retry=False)

    saved = ctx.restore()  # the checkpoint: {"step": steps done, "resumed_from": the step an attempt resumed at}
    start = saved["step"] if saved else 0
    resumed_from = start or (saved["resumed_from"] if saved else None)
    for step in range(start, p.steps):
        if ctx.should_stop():
            ctx.checkpoint({"step": step, "resumed_from": resumed_from})
            return ctx.interrupted()
        if p.step_s:
            time.sleep(p.step_s)
        ctx.log_metrics({"noop_step": float(step + 1)}, step=step + 1)
        ctx.progress((step + 1) / p.steps, f"step {step + 1}/{p.steps}")
        if p.checkpoint:
            ctx.checkpoint({"step": step + 1, "resumed_from": resumed_from})
    done = max(start, p.steps)

    if p.counter_dir:
        ctx.verify_lease()  # the side effect below cannot be fenced by the database: check first
        path = Path(p.counter_dir) / ctx.job_id
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{ctx.attempt}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return {"steps": done, "resumed_from": resumed_from, "attempt": ctx.attempt, "value": p.value}
