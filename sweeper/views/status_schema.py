"""The `sweeper status --json` schema, `sweeper.status/1`, as pydantic models.

This is the contract scripts rely on (documented in docs/status-json.md). Within
`sweeper.status/1` keys are only ever added; a key that changes meaning or goes away bumps the
schema id. The status command itself does not import this module (it builds plain dicts from
the dataclasses in dashboard.py); tests validate its output against these models,
tests/test_status_contract.py checks that those dataclasses and these models agree field by
field, and `python -m sweeper.views.status_schema` prints the JSON Schema for other tools.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

State = Literal["blocked", "pending", "running", "done", "failed", "cancelled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Counts(_Strict):
    blocked: int
    pending: int
    running: int
    done: int
    failed: int
    cancelled: int


class Sweep(_Strict):
    name: str
    description: str
    spec_file: str | None
    created_at: float = Field(description="epoch seconds")


class Stage(_Strict):
    sweep: str
    stage: str
    kind: str
    counts: Counts
    total: int
    needs: list[str]
    waiting_on: str | None = Field(description='why jobs are blocked, e.g. "waiting on model_search: 60/72 done"')
    mean_duration_s: float | None = Field(description="mean run time of the stage's done jobs")
    throughput_per_h: float | None = Field(description="done jobs per hour while the stage ran")
    eta_s: float | None = Field(description="seconds until the stage is finished; null: unknown yet")
    stale: int = Field(
        0, description="jobs that ran on a hand-off whose upstream stage changed since; `sweeper retry --stale`"
    )


class Running(_Strict):
    id: str
    sweep: str
    stage: str
    label: str = Field(description="the params that vary within the stage")
    worker: str | None
    attempt: int
    progress: float | None = Field(description="0..1 as the job reports it")
    message: str | None
    epoch: int | None = Field(description='parsed from a message like "epoch 3/15"')
    epochs: int | None
    heartbeat_age_s: float | None


class Leader(_Strict):
    rank: int
    id: str
    sweep: str
    stage: str
    label: str
    value: float
    metrics: dict[str, float] = Field(description="every numeric top-level value of the job's result")


class Leaderboard(_Strict):
    metric: str
    mode: Literal["max", "min"]
    k: int
    rows: list[Leader]
    available: list[str] = Field(description="when no row has the metric: numeric metrics results do have")


class Failed(_Strict):
    id: str
    sweep: str
    stage: str
    label: str
    error: str = Field(description="the exception line of the traceback")
    failures: int
    finished_at: float | None


class Worker(_Strict):
    id: str
    host: str
    pid: int
    status: Literal["running", "stopped", "lost"]
    heartbeat_age_s: float
    current_job: str | None


class Mirror(_Strict):
    notes: list[str]
    last_recovery: dict[str, Any] | None


class Status(_Strict):
    schema_: Literal["sweeper.status/1"] = Field(alias="schema")
    database: str = Field(description="URL with the password masked")
    time: float = Field(description="database clock, epoch seconds")
    sweep: str | None = Field(description="the --sweep filter, or null for all sweeps")
    sweeps: list[Sweep]
    totals: Counts
    workers_live: int
    throughput_per_h: float | None
    eta_s: float | None = Field(description="sum of the known stage ETAs")
    eta_complete: bool = Field(description="false when some unfinished stage has no ETA yet")
    stages: list[Stage]
    running: list[Running]
    leaderboard: Leaderboard | None = Field(description="null with --top 0")
    failed: list[Failed] = Field(description="the most recent failures (--failures)")
    failed_total: int
    workers: list[Worker]
    workers_hidden: int
    mirror: Mirror | None = Field(
        None, description="only when the state directory is mirrored (a network mount such as Google Drive)"
    )


if __name__ == "__main__":
    print(json.dumps(Status.model_json_schema(by_alias=True), indent=2))
