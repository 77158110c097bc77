"""Job kinds used by the tests through `kind: tests.kinds:NAME` (the user-code path)."""

from __future__ import annotations

from typing import Any

from sweeper.context import JobContext


def echo(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Returns its params as the result, so tests can see what a job ran with."""
    return {"params": params, "attempt": ctx.attempt}
