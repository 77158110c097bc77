"""The result of `kind: benchmark`, as one typed schema shared by the job and the report.

jobs/kinds/benchmark.py builds a `BenchmarkResult` and returns its `to_dict()`; jobs/report/sections.py reads a
finished job's result back with `BenchmarkResult.read()`. A key renamed on one side fails the
other side's tests instead of silently vanishing from the report. Extra keys are refused on both
sides for the same reason. Fields added later are optional (None), so results written before
them still read: the report then says the figure was not measured.

Importable without torch (the report and `sweeper status` must not pay for it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRecord(Schema):
    """One distinct model of the upstream stages (told apart by sha256)."""

    name: str  # "<stage>/step-<k>", or "<stage>" for a train job's model.pt
    job: str
    stage: str
    step: int | None
    architecture: str
    arch: dict[str, Any]
    flops: int
    macs: int
    params: int
    nonzero_params: int
    effective_macs: int
    size_bytes: int
    test_accuracy: float
    matmul_max_abs_diff: float
    pareto: bool | None = None  # on the Pareto front; not in `selected`
    layers: dict[str, dict[str, Any]] | None = None  # per-layer FLOPs (jobs/ml/flops.py); not in `selected`


class OriginalModel(Schema):
    """The network of Step 1 (the `original` param), timed with nn modules beside the selected model."""

    name: str
    job: str
    stage: str
    architecture: str
    arch: dict[str, Any]
    flops: int
    params: int
    test_accuracy: float


class Timing(Schema):
    """Inference over the test set at `batch_size`: medians over `rounds` interleaved passes, in seconds."""

    model: str  # the timed model's name (the selected one)
    images: int
    batch_size: int
    threads: int
    rounds: int
    nn_median_s: float
    nn_iqr_s: float
    matmul_median_s: float
    matmul_iqr_s: float
    matmul_over_nn: float
    matmul_strategies: str
    # The Step 1 network with nn modules, timed in the same interleaved rounds (None: no `original` given)
    original_model: str | None = None
    original_nn_median_s: float | None = None
    original_nn_iqr_s: float | None = None
    matmul_over_original_nn: float | None = None  # the selected model's matmul time / the original's nn time
    cuda_nn_median_s: float | None = None
    cuda_matmul_median_s: float | None = None
    cuda_matmul_over_nn: float | None = None
    cuda_original_nn_median_s: float | None = None
    cuda_device: str | None = None
    cuda: str | None = None  # why CUDA was not timed
    cpu: str | None = None
    torch: str | None = None
    note: str | None = None  # e.g. no model above the floor: the most accurate one was timed


class BenchmarkResult(Schema):
    models: list[ModelRecord]
    pareto_front: list[str]
    min_test_accuracy: float
    selected: ModelRecord | None
    selection: str
    flops_convention: str
    matmul_allclose: bool
    timing: Timing
    timing_detail: dict[str, Any]  # per timed model and device: every pass's time
    test_images: int
    original: OriginalModel | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)

    @classmethod
    def read(cls, result: Any) -> BenchmarkResult:
        """A finished job's result; ValueError with the first problems when it does not match."""
        try:
            return cls.model_validate(result)
        except ValidationError as exc:
            problems = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]]
            raise ValueError("; ".join(problems)) from None
