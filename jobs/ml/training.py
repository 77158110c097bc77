"""The resumable training loop, shared by `kind: train` and the fine-tuning of `kind: prune`.

    model = build(arch, init, seed)                       # or a pruned model
    optimizer = make_optimizer(model, lr=1e-3, momentum=0.9)
    state = fit(ctx, model, optimizer, data.train, data.test, LoopConfig(epochs=5, batch_size=32, seed=0),
                checkpoint=ctx.restore())                 # None on a first run
    if isinstance(state, Interrupted):
        return state                                      # checkpointed; the worker releases the job
    loss, acc = evaluate(model, data.test.x, data.test.y)

`fit` keeps its progress in a TrainState (named fields) and returns it. Resume is one branch: model,
optimizer, RNGs and position come from one checkpoint dict. A checkpoint is the TrainState turned
into a plain dict (TrainState.to_dict), written every `checkpoint_every_s` seconds of training
compute, at each epoch end, and when the worker asks it to stop. Pass `save=` to wrap the dict in
a bigger checkpoint (e.g. {"phase": "finetune", "train": state}) and hand fit the inner dict on
resume. `after_step` runs after every optimizer step (e.g. re-zero pruned channels) and must be
deterministic.

Determinism: each epoch's order is torch.randperm from a generator seeded with (seed, epoch), so
a resume knows the order from the epoch number alone and continues at the exact batch. With the
same seed and thread count, a job killed anywhere and resumed ends bit-identical to an
uninterrupted one, metrics included (on CUDA: on the same GPU model; see jobs/ml/device.py).

Devices: fit trains where the model and data are (jobs/ml/device.py puts them there); batches are
gathered on that device. The checkpoint holds CPU tensors whatever the device, so it resumes on
any device.

The checkpoint dict (all plain tensors and Python values; loads with weights_only=True): the
TrainState's fields (sums and window as lists) plus version, model, optimizer and rng. The keys are
those from before TrainState existed, so a job resumes across that change (tests/test_train_loop.py
keeps a checkpoint written then):
    version                   STATE_VERSION; fit refuses a checkpoint of another version
    model, optimizer          state_dicts (the optimizer is our SGD: momentum buffers, lr, ...)
    epoch, batch, step        epochs completed, batches done in the current epoch, batches overall
    batches_per_epoch         for fractional epoch counts
    epoch_sums                [loss_sum, correct, images] of the current epoch
    log_sums                  [loss_sum, correct, images, batches] since the last log point
                              (TrainState.log_sums and .batches_since_log)
    window                    [[images, correct], ...] of the last batches, for the target accuracy
    train_s                   training compute so far (forward, backward, step, batch gathering)
    time_to_target_s, target_step, stopped_at_target
    eval_s, checkpoint_s      time spent evaluating and writing checkpoints (not in train_s)
    checkpoints               how many checkpoints fit has written for this state
    rng                       torch, python and numpy RNG states
    history                   {"points": [...], "epochs": [...]} for history.json and curves
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweeper.outcome import Interrupted

if TYPE_CHECKING:  # only a type here: the loop must not pull in the queue
    from sweeper.context import JobContext

from jobs.ml.data import Split
from jobs.ml.device import CPU, cpu_state

STATE_VERSION = 1


@dataclass(frozen=True)
class LoopConfig:
    epochs: int  # train until this many epochs are complete
    batch_size: int
    seed: int
    checkpoint_every_s: float = 30.0  # of training compute
    log_every: int = 100  # batches between step metrics (loss, train_acc)
    eval_batch_size: int = 500  # 1000 adds ~100 MB of activations to the peak memory of a worker
    target_train_acc: float | None = 0.90  # None: do not measure time to target
    target_window: int = 10_000  # images the running accuracy is measured over (see docs/jobs.md)
    stop_at_target: bool = False
    metric_prefix: str = ""  # distinct per fit() call when a job calls fit more than once


class SGD:
    """torch.optim.SGD's update (no dampening, no Nesterov; momentum, weight decay), bit for bit.

    Why not torch.optim: its first use imports torch._dynamo, which costs each worker process
    about 150 MB of its 1.2 GB memory budget and 2-3 s of start-up, for three in-place ops per
    parameter. tests/test_train_loop.py checks that the weights match torch.optim.SGD exactly.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if self.weight_decay:
                grad = grad.add(p, alpha=self.weight_decay)
            if self.momentum:
                buf = self.momentum_buffers[i]
                if buf is None:
                    buf = self.momentum_buffers[i] = torch.clone(grad).detach()
                else:
                    buf.mul_(self.momentum).add_(grad)
                grad = buf
            p.add_(grad, alpha=-self.lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            # on the CPU whatever the device: a checkpoint resumes anywhere (jobs/ml/device.py)
            "momentum_buffers": [None if b is None else b.to(CPU, copy=True) for b in self.momentum_buffers],
        }

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        buffers = list(saved["momentum_buffers"])
        if len(buffers) != len(self.params):
            raise ValueError(f"optimizer state has {len(buffers)} buffers for {len(self.params)} parameters")
        self.lr, self.momentum, self.weight_decay = saved["lr"], saved["momentum"], saved["weight_decay"]
        self.momentum_buffers = [
            None if b is None else b.to(p.device, copy=True) for b, p in zip(buffers, self.params, strict=True)
        ]


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> SGD:
    """SGD with momentum, as the assignment asks: a fresh one has no momentum yet."""
    return SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def shuffle_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s order: fixed by (seed, epoch) alone, so a resume can rebuild it."""
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed(seed, epoch)))


def window_batches(cfg: LoopConfig, n_train: int) -> int:
    """How many of the latest batches the running accuracy covers (at most one epoch)."""
    per_epoch = math.ceil(n_train / cfg.batch_size)
    return max(1, min(math.ceil(cfg.target_window / cfg.batch_size), per_epoch))


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on (x, y), in eval mode, without autograd."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    n = max(1, len(y))
    return loss_sum / n, correct / n


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels (int64) for every row of x."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple), "the legacy (tuple) form, the default"
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(saved: Mapping[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    random.setstate(_tuples(saved["python"]))
    name, keys, *rest = saved["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass
class Sums:
    """Sums over some batches, for their mean loss and accuracy."""

    loss_sum: float = 0.0
    correct: int = 0
    images: int = 0

    def add(self, loss_sum: float, correct: int, images: int) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.images += images

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.images

    @property
    def accuracy(self) -> float:
        return self.correct / self.images


class Window:
    """The last `size` batches as (images, correct), with running totals: the running train accuracy
    that the target is checked on."""

    def __init__(self, size: int, batches: Iterable[Iterable[int]] = ()):
        self.size = size
        self.batches: deque[tuple[int, int]] = deque((int(n), int(c)) for n, c in batches)
        self.images = sum(n for n, _ in self.batches)
        self.correct = sum(c for _, c in self.batches)

    def add(self, images: int, correct: int) -> None:
        self.batches.append((images, correct))
        self.images += images
        self.correct += correct
        if len(self.batches) > self.size:
            old_images, old_correct = self.batches.popleft()
            self.images -= old_images
            self.correct -= old_correct

    def reached(self, target: float) -> bool:
        """Whether the window is full and its accuracy is at least `target`."""
        return len(self.batches) == self.size and self.correct >= target * self.images

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.images)


@dataclass
class History:
    """The figures logged so far, for history.json and the curves."""

    points: list[dict[str, Any]] = field(default_factory=list)  # every log_every batches: loss, train_acc
    epochs: list[dict[str, Any]] = field(default_factory=list)  # every epoch end: train and test figures


@dataclass
class TrainState:
    """Where training stands, with named fields; a plain dict only in a checkpoint (see the module doc)."""

    window: Window
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # batches overall
    batches_per_epoch: int = 0
    epoch_sums: Sums = field(default_factory=Sums)
    log_sums: Sums = field(default_factory=Sums)
    batches_since_log: int = 0
    train_s: float = 0.0  # training compute: forward, backward, step, batch gathering
    time_to_target_s: float | None = None
    target_step: int | None = None
    stopped_at_target: bool = False
    eval_s: float = 0.0  # evaluating: not in train_s
    checkpoint_s: float = 0.0  # writing checkpoints: not in train_s
    checkpoints: int = 0  # how many checkpoints fit has written for this state
    history: History = field(default_factory=History)

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any], window_size: int) -> TrainState:
        if saved.get("version") != STATE_VERSION:
            raise ValueError(f"checkpoint has TrainState version {saved.get('version')}, expected {STATE_VERSION}")
        loss_sum, correct, images, since_log = saved["log_sums"]
        return cls(
            window=Window(window_size, saved["window"]),
            epoch=saved["epoch"],
            batch=saved["batch"],
            step=saved["step"],
            batches_per_epoch=saved.get("batches_per_epoch", 0),
            epoch_sums=Sums(*saved["epoch_sums"]),
            log_sums=Sums(loss_sum, correct, images),
            batches_since_log=since_log,
            train_s=saved["train_s"],
            time_to_target_s=saved["time_to_target_s"],
            target_step=saved["target_step"],
            stopped_at_target=saved["stopped_at_target"],
            eval_s=saved["eval_s"],
            checkpoint_s=saved["checkpoint_s"],
            checkpoints=saved["checkpoints"],
            history=History(list(saved["history"]["points"]), list(saved["history"]["epochs"])),
        )

    def to_dict(self, model: dict[str, Any], optimizer: dict[str, Any], rng: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint dict: plain tensors and Python values, keys as in the module doc."""
        es, ls = self.epoch_sums, self.log_sums
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "batches_per_epoch": self.batches_per_epoch,
            "epoch_sums": [es.loss_sum, es.correct, es.images],
            "log_sums": [ls.loss_sum, ls.correct, ls.images, self.batches_since_log],
            "window": [list(w) for w in self.window.batches],
            "train_s": self.train_s,
            "time_to_target_s": self.time_to_target_s,
            "target_step": self.target_step,
            "stopped_at_target": self.stopped_at_target,
            "eval_s": self.eval_s,
            "checkpoint_s": self.checkpoint_s,
            "checkpoints": self.checkpoints,
            "history": {"points": list(self.history.points), "epochs": list(self.history.epochs)},
            "model": model,
            "optimizer": optimizer,
            "rng": rng,
        }

    def summary(self) -> TrainSummary:
        """The time accounting and target figures, for results and history.json."""
        return TrainSummary(
            epochs=self.epoch + self.batch / max(1, self.batches_per_epoch),
            steps=self.step,
            total_train_s=self.train_s,
            time_to_target_s=self.time_to_target_s,
            reached=self.time_to_target_s is not None,
            target_step=self.target_step,
            eval_s=self.eval_s,
            checkpoint_s=self.checkpoint_s,
            checkpoints=self.checkpoints,
        )


@dataclass(frozen=True)
class TrainSummary:
    """How long training took and when it reached its target; `time` in history.json (to_dict)."""

    epochs: float  # epochs trained, fractional when stopped mid-epoch
    steps: int  # batches overall
    total_train_s: float  # training compute (TrainState.train_s)
    time_to_target_s: float | None
    reached: bool  # whether the running train accuracy reached the target
    target_step: int | None
    eval_s: float
    checkpoint_s: float
    checkpoints: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit(
    ctx: JobContext,
    model: nn.Module,
    optimizer: SGD,
    train: Split,
    test: Split | None,
    cfg: LoopConfig,
    checkpoint: Mapping[str, Any] | None = None,
    *,
    save: Callable[[dict[str, Any]], None] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> TrainState | Interrupted:
    """Train `model` up to cfg.epochs epochs; return the final TrainState, or ctx.interrupted().

    `checkpoint` is a dict that fit saved earlier: model, optimizer, position, RNGs and time
    accounting are restored from it and training continues at the exact batch.
    """
    save = save or ctx.checkpoint
    progress = progress or ctx.progress
    p = cfg.metric_prefix
    n, bs = len(train), cfg.batch_size
    batches = math.ceil(n / bs)
    if checkpoint is None:
        state = TrainState(window=Window(window_batches(cfg, n)))
    else:  # resume
        state = TrainState.from_dict(checkpoint, window_batches(cfg, n))
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])
    state.batches_per_epoch = batches
    # batches are gathered where the data lives (the model's device; see jobs/ml/device.py)
    xbuf = torch.empty((bs, *train.x.shape[1:]), dtype=train.x.dtype, device=train.x.device)  # reused
    ybuf = torch.empty(bs, dtype=train.y.dtype, device=train.y.device)
    on_cpu = train.x.device.type == "cpu"
    last_ckpt_s = state.train_s
    last_progress = 0.0

    def write_checkpoint() -> None:
        nonlocal last_ckpt_s
        tick = time.perf_counter()
        state.checkpoints += 1
        weights = model.state_dict() if on_cpu else cpu_state(model)
        save(state.to_dict(weights, optimizer.state_dict(), rng_state()))
        state.checkpoint_s += time.perf_counter() - tick
        last_ckpt_s = state.train_s

    model.train()
    while state.epoch < cfg.epochs and not state.stopped_at_target:
        epoch = state.epoch
        order = epoch_order(n, cfg.seed, epoch)
        if not on_cpu:
            order = order.to(train.x.device)
        while state.batch < batches:
            if ctx.should_stop():
                write_checkpoint()
                return ctx.interrupted()
            # -- one batch: everything between the two clock reads is training compute --
            tick = time.perf_counter()
            b = state.batch
            idx = order[b * bs : (b + 1) * bs]
            images = len(idx)
            full = images == bs
            xb = torch.index_select(train.x, 0, idx, out=xbuf) if full else train.x[idx]
            yb = torch.index_select(train.y, 0, idx, out=ybuf) if full else train.y[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            correct = int((logits.argmax(1) == yb).sum())
            loss_sum = loss.item() * images
            state.batch += 1
            state.step += 1
            state.epoch_sums.add(loss_sum, correct, images)
            state.log_sums.add(loss_sum, correct, images)
            state.batches_since_log += 1
            state.window.add(images, correct)
            state.train_s += time.perf_counter() - tick
            # -- bookkeeping outside the clock --
            step = state.step
            target = cfg.target_train_acc
            if target is not None and state.time_to_target_s is None and state.window.reached(target):
                state.time_to_target_s = state.train_s
                state.target_step = step
                ctx.log_metrics({f"{p}time_to_target_s": state.train_s}, step=step)
                if cfg.stop_at_target:
                    state.stopped_at_target = True
            if state.batches_since_log >= cfg.log_every or state.batch == batches:
                ls = state.log_sums
                point = {"step": step, "epoch": epoch + state.batch / batches, "loss": ls.mean_loss}
                point["train_acc"] = ls.accuracy
                ctx.log_metrics({f"{p}loss": point["loss"], f"{p}train_acc": point["train_acc"]}, step=step)
                point["train_s"] = state.train_s
                state.history.points.append(point)
                state.log_sums, state.batches_since_log = Sums(), 0
            if state.train_s - last_progress >= 0.5 or state.batch == batches:
                last_progress = state.train_s
                seen = epoch * n + min(state.batch * bs, n)
                progress(
                    (epoch + state.batch / batches) / cfg.epochs,
                    f"epoch {epoch + 1}/{cfg.epochs} batch {state.batch}/{batches} loss {loss.item():.3f} "
                    f"acc {state.window.accuracy:.3f} {seen / max(state.train_s, 1e-9):.0f} img/s",
                )
            if state.stopped_at_target:
                break
            if state.batch < batches and state.train_s - last_ckpt_s >= cfg.checkpoint_every_s:
                write_checkpoint()
        if state.batch == batches:  # a whole epoch: evaluate, log, start the next one
            es = state.epoch_sums
            record: dict[str, Any] = {"epoch": epoch + 1, "step": state.step}
            record["train_loss"], record["train_acc"] = es.mean_loss, es.accuracy
            if test is not None:
                tick = time.perf_counter()
                record["test_loss"], record["test_acc"] = evaluate(model, test.x, test.y, cfg.eval_batch_size)
                state.eval_s += time.perf_counter() - tick
            ctx.log_metrics({f"{p}epoch_{k}": v for k, v in record.items() if k not in ("epoch", "step")}, epoch + 1)
            record["train_s"] = state.train_s
            state.history.epochs.append(record)
            state.epoch += 1
            state.batch = 0
            state.epoch_sums = Sums()
        write_checkpoint()
    return state
