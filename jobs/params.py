"""Parameter models of the job kinds, importable without torch.

`sweeper enqueue` validates every job's params against these (unknown names, wrong types) before
anything is queued. Semantic checks that need the data shape (a kernel too large for the input)
happen when the job starts, and fail the job without retries.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoopParams(StrictParams):
    steps: int = 1
    step_s: float = 0.0
    checkpoint: bool = True
    counter_dir: str | None = None
    fail: bool = False  # raise on every attempt (a poison job)
    fail_times: int = 0  # raise on the first N attempts, then succeed
    bad_param: bool = False  # fail at once, without retries
    value: float = 0.0  # reported as the `value` metric (for ranking in hand-off tests)
    seed: int = 0
    upstream: object = None  # a hand-off reference, for dependency tests
