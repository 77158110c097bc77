"""Job kinds used by the tests through `kind: tests.kinds:NAME` (the user-code path)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sweeper.context import JobContext


def echo(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Returns its params as the result, so tests can see what a job ran with."""
    return {"params": params, "attempt": ctx.attempt}


def leak(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Fails with an error that quotes a connection URL (from $LEAK_URL), as a driver's exception may."""
    import os

    raise RuntimeError(f"could not connect to {os.environ['LEAK_URL']}")


def metrics(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Returns `params['metrics']` as its result: a sweep whose metric names a test chooses."""
    return dict(params["metrics"])


def _wait_for_file(path: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.05)


def zombie_fails(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Logs loss at steps 1-3 (a checkpoint each), then parks at a gate the test opens.

    Attempt 1 (the worker the test freezes into a zombie) buffers a point at step 99, touches
    <gate>.zombie, waits for <gate>.go and raises. Later attempts (the owner) touch <gate>.owner,
    wait for <gate>.finish, log steps 4-6 and finish.
    """
    gate = str(params["gate"])
    state = ctx.restore() or {"step": 0}
    for step in range(state["step"] + 1, 4):
        ctx.log_metrics({"loss": float(step)}, step)
        state["step"] = step
        ctx.checkpoint(state)
    if ctx.attempt == 1:
        ctx.log_metrics({"loss": -1.0}, 99)  # buffered; written only if this worker closes the run
        Path(f"{gate}.zombie").touch()
        _wait_for_file(Path(f"{gate}.go"))
        raise RuntimeError("the job raised after its worker lost the lease")
    Path(f"{gate}.owner").touch()
    _wait_for_file(Path(f"{gate}.finish"))
    for step in range(4, 7):
        ctx.log_metrics({"loss": float(step)}, step)
    return {"steps": 6, "attempt": ctx.attempt}


def together(ctx: JobContext, params: dict[str, Any]) -> Any:
    """Runs as `kind: noop` once `params['expect']` jobs have started (each touches a file in
    `params['meet']`): the first job waits for the others, so each of that many workers holds one
    job at the same time, however slowly the machine starts them."""
    from jobs.kinds.noop import run as noop

    meet = Path(params["meet"])
    meet.mkdir(parents=True, exist_ok=True)
    (meet / ctx.job_id).touch()
    deadline = time.monotonic() + 300.0
    while len(list(meet.iterdir())) < int(params["expect"]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(list(meet.iterdir()))} of {params['expect']} jobs started")
        time.sleep(0.05)
    return noop(ctx, {k: v for k, v in params.items() if k not in ("meet", "expect")})


def artifacts(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Records two output files: result.json (`params['result']`) and table.csv (`params['rows']`)."""
    import csv
    import json
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="sweeper-test-artifacts-"))
    (out / "result.json").write_text(json.dumps(params["result"]))
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(params["rows"][0]))
        writer.writeheader()
        writer.writerows(params["rows"])
    for name in ("result.json", "table.csv"):
        ctx.log_artifact(out / name)
    return {"files": 2}
