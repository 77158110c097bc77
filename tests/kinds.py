"""Job kinds used by the tests through `kind: tests.kinds:NAME` (the user-code path)."""

from __future__ import annotations

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
