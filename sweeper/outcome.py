"""How a job ends, as a job kind says it: `raise JobFailed(...)` or `return Interrupted(...)`.

Imports nothing of the orchestrator, so the data and model code of a job kind can raise a
clear error without loading the queue. `sweeper.context` re-exports both for job kinds.
"""

from __future__ import annotations

from dataclasses import dataclass


class JobFailed(Exception):
    """Raise from a job to fail it with a clear message. retry=False: do not try again."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry


@dataclass(frozen=True)
class Interrupted:
    """Returned by a job that stopped early at a safe point; the job is released, not failed."""

    reason: str = "stop requested"
