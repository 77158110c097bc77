"""Where a `kind: prune` job stands, with named fields; a plain dict only in a checkpoint.

    state = PruneState.from_checkpoint(ctx.restore())     # or PruneState(...) on a first run
    ...                                                   # jobs/kinds/prune.py reads and sets fields
    ctx.checkpoint(state.to_checkpoint())

The checkpoint dict holds plain tensors and Python values (it loads with weights_only=True) under
the keys that jobs/kinds/prune.py wrote when it kept its state as that dict (STATE_VERSION 2), so
a job checkpointed by that code resumes under this one: tests/test_prune_state.py resumes
checkpoints it wrote (tests/data/prune_state_v2.pt). Keys that were written only once they meant
something (`control_converged`, `resumes`, a step's `unit` or `amount`) are still left out when
they are empty. The step records are also the rows of the job's pruning.json and pruning.csv and
its `triplets`, so their keys are the public names of those figures.

    version             STATE_VERSION
    method, layer       the job's params, for a check on resume
    input               InputRecord: step 0, the model from upstream, measured
    input_model         {arch, state_dict} of the input (magnitude prunes the input at every amount)
    current             {step, arch, state_dict, accuracy, total_drop}: the last accepted model
    control             {state_dict, accuracy}: the unpruned control, fine-tuned beside every step
    upstream_total_drop the cumulative drop the input carries from upstream prune jobs
    steps               [StepRecord, ...]: every step tried, accepted or not
    pending             PendingStep: the step pruned but not yet recorded (None between steps)
    finetune            fit()'s checkpoint of the pending step's fine-tuning (jobs/ml/training.py)
    control_finetune    fit()'s checkpoint of the control's fine-tuning in this step
    done, stop_reason   whether pruning has stopped, and why
    control_converged   the step after which the control stopped being fine-tuned
    resumes             [{attempt, steps_done, phase, step, epoch, batch}, ...]: where attempts resumed
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from sweeper.outcome import JobFailed

STATE_VERSION = 2  # 2: the unpruned control and the cumulative drop

Weights = dict[str, torch.Tensor]  # a CPU state dict


def _known(cls: type, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `saved` that are fields of dataclass `cls` (a required one missing: KeyError)."""
    return {f.name: saved[f.name] for f in fields(cls) if f.name in saved}


def _without_none(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not (k in keys and v is None)}


@dataclass
class InputRecord:
    """Step 0: the model as it came from upstream, measured before any pruning."""

    arch: dict[str, Any]
    architecture: str
    units: int | None  # of the pruned layer (structured); None for magnitude
    test_accuracy: float
    test_loss: float
    flops: int
    macs: int
    params: int
    model: str  # the artifact's name: step-0.pt
    sha256: str
    step: int = 0

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> InputRecord:
        return cls(**_known(cls, saved))

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        return {"step": record.pop("step"), **record}


METHOD_KEYS = (
    "controlled_drop",
    "unit",
    "importance",
    "units",
    "amount",
    "density",
    "nonzero_params",
    "effective_macs",
)


@dataclass
class StepRecord:
    """One step tried: the triplet (before, after pruning, after fine-tuning), the control, the drops
    and the verdict. A row of pruning.json and pruning.csv; its keys name the figures there."""

    step: int
    layer: str
    arch: dict[str, Any]
    architecture: str
    accuracy_before: float
    accuracy_after_prune: float
    accuracy_after_finetune: float
    test_loss: float
    raw_drop: float
    control_accuracy: float
    control_gain: float
    control_measured: bool
    pruning_drop: float
    total_drop: float
    accepted: bool
    flops: int
    macs: int
    params: int
    finetune_s: float
    control_finetune_s: float
    model: str  # the artifact's name: step-<k>.pt
    sha256: str
    # raw_drop + control_gain; None in steps recorded before it was (it is then pruning_drop)
    controlled_drop: float | None = None
    # structured
    unit: int | None = None
    importance: float | None = None
    units: int | None = None
    # magnitude
    amount: float | None = None
    density: dict[str, float] | None = None  # non-zero fraction of each weight layer
    nonzero_params: int | None = None
    effective_macs: int | None = None

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> StepRecord:
        known = _known(cls, {**saved, "control_measured": saved.get("control_measured")})
        if known["control_measured"] is None:  # recorded before the flag: a control ran when it took time
            known["control_measured"] = saved["control_finetune_s"] > 0
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return _without_none(asdict(self), METHOD_KEYS)


@dataclass
class PendingStep:
    """A step whose unit was removed (or whose weights were zeroed) and measured, not yet recorded."""

    step: int
    arch: dict[str, Any]
    state_dict: Weights  # the pruned model before fine-tuning
    accuracy_before: float
    accuracy_after_prune: float
    masks: dict[str, torch.Tensor] | None = None  # magnitude: where the zeros are held through fine-tuning
    # structured: the unit removed, its importance and the units left
    unit: int | None = None
    importance: float | None = None
    units: int | None = None
    amount: float | None = None  # magnitude: the fraction of weights zeroed

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> PendingStep:
        return cls(**_known(cls, saved))

    def to_dict(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: it would copy the tensors
        return _without_none(record, ("unit", "importance", "units", "amount"))


@dataclass
class ModelState:
    """A model as plain data: its architecture and CPU weights."""

    arch: dict[str, Any]
    state_dict: Weights

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> ModelState:
        return cls(**_known(cls, saved))

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "state_dict": self.state_dict}


@dataclass
class AcceptedModel:
    """The model after the last accepted step (step 0: the input); the job's result so far."""

    step: int
    arch: dict[str, Any]
    state_dict: Weights
    accuracy: float
    total_drop: float | None = None  # None at step 0: the input carries only the upstream drop

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> AcceptedModel:
        return cls(**_known(cls, saved))

    def to_dict(self) -> dict[str, Any]:
        record = {"step": self.step, "arch": self.arch, "state_dict": self.state_dict, "accuracy": self.accuracy}
        return record if self.total_drop is None else {**record, "total_drop": self.total_drop}


@dataclass
class Control:
    """The unpruned control (the input's architecture) as far as it has been fine-tuned."""

    state_dict: Weights
    accuracy: float

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> Control:
        return cls(**_known(cls, saved))

    def to_dict(self) -> dict[str, Any]:
        return {"state_dict": self.state_dict, "accuracy": self.accuracy}


@dataclass
class FineTuning:
    """A fine-tuning under way or finished: the checkpoint dict that fit() wrote (its format is
    jobs/ml/training.py's), kept as it is to be handed back to fit on resume."""

    checkpoint: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.checkpoint["epoch"])

    @property
    def batch(self) -> int:
        return int(self.checkpoint["batch"])

    @property
    def train_s(self) -> float:
        return float(self.checkpoint["train_s"])

    @property
    def weights(self) -> Weights:
        """The model's weights at that checkpoint (at the end: the fine-tuned model's)."""
        return self.checkpoint["model"]


@dataclass
class Resume:
    """Where an attempt picked the work up: in the log, and in the result's `resumes`."""

    attempt: int
    steps_done: int
    phase: str  # between steps | before fine-tuning | fine-tuning | control fine-tuning
    step: int | None = None
    epoch: int | None = None
    batch: int | None = None

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> Resume:
        return cls(**_known(cls, saved))

    def to_dict(self) -> dict[str, Any]:
        return _without_none(asdict(self), ("step", "epoch", "batch"))


@dataclass
class PruneState:
    """Where a prune job stands (the fields are described in the module doc)."""

    method: str
    layer: str
    input: InputRecord
    current: AcceptedModel
    input_model: ModelState | None = None
    control: Control | None = None
    upstream_total_drop: float = 0.0
    steps: list[StepRecord] = field(default_factory=list)
    pending: PendingStep | None = None
    finetune: FineTuning | None = None
    control_finetune: FineTuning | None = None
    done: bool = False
    stop_reason: str | None = None
    control_converged: int | None = None
    resumes: list[Resume] = field(default_factory=list)

    def fine_tuning(self, control: bool) -> FineTuning | None:
        return self.control_finetune if control else self.finetune

    def set_fine_tuning(self, control: bool, checkpoint: dict[str, Any]) -> None:
        if control:
            self.control_finetune = FineTuning(checkpoint)
        else:
            self.finetune = FineTuning(checkpoint)

    def stop(self, reason: str) -> None:
        self.done, self.stop_reason = True, reason

    @classmethod
    def from_checkpoint(cls, saved: Mapping[str, Any]) -> PruneState:
        if saved.get("version") != STATE_VERSION:
            raise JobFailed(f"checkpoint has prune state version {saved.get('version')}, expected {STATE_VERSION}")

        def optional(key: str, kind: Any) -> Any:
            value = saved.get(key)
            return None if value is None else kind(value)

        return cls(
            method=saved["method"],
            layer=saved["layer"],
            input=InputRecord.from_dict(saved["input"]),
            current=AcceptedModel.from_dict(saved["current"]),
            input_model=optional("input_model", ModelState.from_dict),
            control=optional("control", Control.from_dict),
            upstream_total_drop=saved["upstream_total_drop"],
            steps=[StepRecord.from_dict(r) for r in saved["steps"]],
            pending=optional("pending", PendingStep.from_dict),
            finetune=optional("finetune", FineTuning),
            control_finetune=optional("control_finetune", FineTuning),
            done=saved["done"],
            stop_reason=saved["stop_reason"],
            control_converged=saved.get("control_converged"),
            resumes=[Resume.from_dict(r) for r in saved.get("resumes", [])],
        )

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict: plain tensors and Python values, keys as in the module doc."""
        saved: dict[str, Any] = {
            "version": STATE_VERSION,
            "method": self.method,
            "layer": self.layer,
            "input": self.input.to_dict(),
            "input_model": None if self.input_model is None else self.input_model.to_dict(),
            "current": self.current.to_dict(),
            "control": None if self.control is None else self.control.to_dict(),
            "upstream_total_drop": self.upstream_total_drop,
            "steps": [r.to_dict() for r in self.steps],
            "pending": None if self.pending is None else self.pending.to_dict(),
            "finetune": None if self.finetune is None else self.finetune.checkpoint,
            "control_finetune": None if self.control_finetune is None else self.control_finetune.checkpoint,
            "done": self.done,
            "stop_reason": self.stop_reason,
        }
        if self.control_converged is not None:
            saved["control_converged"] = self.control_converged
        if self.resumes:
            saved["resumes"] = [r.to_dict() for r in self.resumes]
        return saved
