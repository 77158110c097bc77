"""Parameter models of the job kinds, importable without torch.

`sweeper enqueue` validates every job's params against these (unknown names, wrong types) before
anything is queued. Semantic checks that need the data shape (a kernel too large for the input)
happen when the job starts, and fail the job without retries.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class StrictParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The numbers the kind's result holds (not booleans: hand-offs do not rank by them).
    # `enqueue` checks every hand-off (best_of, inherit, repeat, result_of) that ranks this
    # kind's jobs against them, so a typo fails before any compute. None: not declared; such
    # hand-offs are checked when they resolve.
    metrics: ClassVar[frozenset[str] | None] = None


P = TypeVar("P", bound=StrictParams)


def parse(model: type[P], params: dict[str, Any], kind: str) -> P:
    """Validated params, or JobFailed (no retries) naming every bad param and what it should be."""
    from pydantic import ValidationError

    from sweeper.outcome import JobFailed  # here, not at the top: enqueue imports this module

    try:
        return model.model_validate(params)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
        raise JobFailed(f"bad {kind} params: " + "; ".join(problems), retry=False) from None


class NoopParams(StrictParams):
    # No `metrics`: tests drive the queue with noop jobs standing in for any kind and record
    # forged results (test_accuracy, score, ...), so its hand-offs are checked when they resolve.

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


Init = Literal["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]
Device = Literal["auto", "cpu", "cuda"]  # auto: CUDA when the worker sees a GPU (jobs/ml/device.py)


class ConvParams(StrictParams):
    channels: int = Field(16, ge=1)
    kernel: int = Field(3, ge=1)


class TrainParams(StrictParams):
    """`kind: train`: the assignment's CNN on Fashion-MNIST, SGD with momentum (see docs/jobs.md, "Train params")."""

    # jobs/kinds/train.py's result (tests/test_handoff_checks.py runs one job and compares)
    metrics: ClassVar[frozenset[str] | None] = frozenset(
        {
            "test_accuracy",
            "test_loss",
            "train_accuracy",
            "train_loss",
            "time_to_target_s",
            "images_to_target",
            "target_step",
            "epochs",
            "total_train_s",
            "params",
            "images_per_s",
            "train_running_accuracy",
            "eval_s",
            "checkpoint_s",
            "checkpoints",
        }
    )

    dataset: Literal["fashion-mnist", "synthetic"] = "fashion-mnist"
    data_dir: str | None = None  # looked in first; then /usr/share/datasets/fashion-mnist; then a download
    train_subset: int | None = Field(None, ge=1)  # first N training images (None: all 60000)
    test_subset: int | None = Field(None, ge=1)
    # hold out the last N training images as a validation split (the same whatever the seed): val_accuracy, val_loss
    val_subset: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    conv1: ConvParams = ConvParams()
    conv2: ConvParams = ConvParams()
    dense: int = Field(100, ge=1)
    padding: int = Field(0, ge=0)
    pool: bool = False
    init: Init = "xavier_uniform"
    lr: float = Field(0.001, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)
    max_epochs: int = Field(15, ge=1)
    target_train_acc: float | None = Field(0.90, gt=0, le=1)  # None: do not measure time to target
    target_window: int = Field(10_000, ge=1)  # images the running train accuracy is measured over
    stop_at_target: bool = False
    checkpoint_every_s: float = Field(30.0, gt=0)  # seconds of training compute between checkpoints
    log_every: int = Field(100, ge=1)  # batches between step metrics
    eval_batch_size: int = Field(500, ge=1)  # 1000 adds ~100 MB to a worker's peak memory
    eval_train: bool = True  # final train_accuracy/train_loss from a full pass (False: last epoch's running figures)
    device: Device = "auto"  # cuda without a GPU fails the job without retries
    # set by a `promote:` stage, not written by hand: the upstream job whose final checkpoint this job continues
    continue_from: str | None = None

    # The metrics a train job reports: `enqueue` checks a promote stage's `by` against them.
    # val_* only with val_subset (see sweeper/grid/promote.py).
    reports: ClassVar[tuple[str, ...]] = (
        "test_accuracy",
        "test_loss",
        "train_accuracy",
        "train_loss",
        "val_accuracy",
        "val_loss",
        "time_to_target_s",
        "images_to_target",
        "total_train_s",
        "images_per_s",
        "train_running_accuracy",
        "epochs",
    )


PruneLayer = Literal["conv1", "conv2", "fc1", "fc2", "all"]


class PruneParams(StrictParams):
    """`kind: prune` (see docs/jobs.md, "kind: prune"). None means: as the upstream model was trained."""

    # the numbers of jobs/kinds/prune.py's result (tests/test_prune_job.py checks them)
    metrics: ClassVar[frozenset[str] | None] = frozenset(
        {
            "test_accuracy",
            "flops",
            "macs",
            "params",
            "result_step",
            "steps_tried",
            "steps_accepted",
            "max_step_drop",
            "max_total_drop",
            "max_steps",
            "control_converged_at_step",
            "control_stop_gain",
            "total_drop",
            "upstream_total_drop",
            "input_test_accuracy",
            "finetune_s",
            "control_finetune_s",
        }
    )

    model: Any = None  # a hand-off: {best_of: STAGE, metric: M, mode: max} or {result_of: STAGE}
    method: Literal["structured", "magnitude"] = "structured"
    # structured: conv1 | conv2 | fc1; magnitude: one of conv1, conv2, fc1, fc2, or all (the default)
    layer: PruneLayer | None = Field(None, validate_default=True)
    max_step_drop: float = Field(0.01, ge=0)  # accept a step while its pruning drop (see jobs/kinds/prune.py) <= this
    # which drop max_step_drop judges: raw, the assignment's (accuracy before the step minus after its
    # fine-tuning); or controlled, raw plus what the same fine-tuning gave the unpruned control
    drop: Literal["raw", "controlled"] = "raw"
    # accept a step only while the cumulative drop from the unpruned model (through upstream prune jobs) <= this
    max_total_drop: float | None = Field(None, ge=0)
    # structured: fine-tune an unpruned copy of the input with the same extra epochs beside every step,
    # to tell what pruning cost from what the extra training gave (the controlled drop; one more
    # fine-tune per step until it converges); the rule uses it only with drop: controlled
    control: bool = True
    # ...until it has converged: once one of the control's fine-tunes gains less than this (test accuracy),
    # more training no longer moves it (0.003 is about one standard error at 10,000 test images), so later
    # steps keep its last accuracy with no gain instead of paying a second fine-tune. None: beside every step
    control_stop_gain: float | None = Field(0.003, ge=0)
    max_steps: int | None = Field(None, ge=1)  # stop after this many steps even if the drops allow more
    amounts: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])  # magnitude
    finetune_epochs: int | None = Field(None, ge=0)  # default 5 (structured), 0 (magnitude)
    finetune_lr: float | None = Field(None, gt=0)
    finetune_momentum: float | None = Field(None, ge=0)
    finetune_weight_decay: float | None = Field(None, ge=0)
    finetune_batch_size: int | None = Field(None, ge=1)
    dataset: Literal["fashion-mnist", "synthetic"] | None = None
    data_dir: str | None = None
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)
    checkpoint_every_s: float = Field(30.0, gt=0)  # seconds of fine-tuning compute between checkpoints
    log_every: int = Field(100, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    device: Device = "auto"  # evaluation and fine-tuning; the pruning itself is cheap and stays on the CPU

    @property
    def layer_name(self) -> str:
        """`layer` as validated: never None ("all" when a magnitude job names none)."""
        assert self.layer is not None, "filled in by _layer_fits_method"
        return self.layer

    @field_validator("layer")
    @classmethod
    def _layer_fits_method(cls, layer: str | None, info: ValidationInfo) -> str | None:
        method = info.data.get("method", "structured")
        if method == "structured" and layer not in ("conv1", "conv2", "fc1"):
            raise ValueError(
                "structured pruning needs layer: conv1, conv2 or fc1 (fc2 is the output layer: it keeps its 10 classes)"
            )
        return layer or "all"

    @field_validator("amounts")
    @classmethod
    def _fractions(cls, amounts: list[float]) -> list[float]:
        if not amounts:
            raise ValueError("give at least one amount, e.g. [0.1, 0.5, 0.9]")
        bad = [a for a in amounts if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"amounts are fractions of each layer's weights to zero, between 0 and 1; got {bad}")
        return amounts


class BenchmarkParams(StrictParams):
    """`kind: benchmark` (see docs/jobs.md, "kind: benchmark")."""

    # the numbers of jobs/kinds/benchmark_result.py's BenchmarkResult at its top level
    metrics: ClassVar[frozenset[str] | None] = frozenset({"min_test_accuracy", "test_images"})

    models: Any = None  # a hand-off: {all_of: [prune_conv1, prune_conv2, prune_fc1]} (or best_of / result_of)
    # a hand-off to the Step 1 network, e.g. {result_of: baseline}: timed with nn modules in the same
    # interleaved rounds as the selected model (the result's timing.original_nn_median_s)
    original: Any = None
    min_test_accuracy: float = Field(0.87, ge=0, le=1)  # the selected model: lowest FLOPs with accuracy above this
    count_activation: bool = False  # FLOPs: a = 1 (bias) by default; True adds 1 per ReLU output
    inference_batch_size: int = Field(32, ge=1)
    threads: int = Field(1, ge=1)  # torch threads while timing (reported with the times)
    timing_rounds: int = Field(7, ge=1)  # timed passes over the test set per variant, interleaved
    time_all: bool = False  # time every model, not only the selected one
    gpu: bool = True  # also time on CUDA when a GPU is present
    atol: float = Field(1e-4, gt=0)  # matmul vs nn logits, on the whole test set
    dataset: Literal["fashion-mnist", "synthetic"] | None = None  # None: as the models were trained
    data_dir: str | None = None
    test_subset: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
