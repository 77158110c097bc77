"""Parameter models of the job kinds, importable without torch.

`sweeper enqueue` validates every job's params against these (unknown names, wrong types) before
anything is queued. Semantic checks that need the data shape (a kernel too large for the input)
happen when the job starts, and fail the job without retries.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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


Init = Literal["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]


class ConvParams(StrictParams):
    channels: int = Field(16, ge=1)
    kernel: int = Field(3, ge=1)


class TrainParams(StrictParams):
    """`kind: train`: the assignment's CNN on Fashion-MNIST, SGD with momentum (see README "Train params")."""

    dataset: Literal["fashion-mnist", "synthetic"] = "fashion-mnist"
    data_dir: str | None = None  # looked in first; then /usr/share/datasets/fashion-mnist; then a download
    train_subset: int | None = Field(None, ge=1)  # first N training images (None: all 60000)
    test_subset: int | None = Field(None, ge=1)
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
    eval_batch_size: int = Field(1000, ge=1)
    eval_train: bool = True  # final train_accuracy/train_loss from a full pass (False: last epoch's running figures)
