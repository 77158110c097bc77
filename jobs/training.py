"""The resumable training loop, shared by `kind: train` and the fine-tuning of `kind: prune`.

    model = build(arch, init, seed)                       # or a pruned model
    optimizer = make_optimizer(model, lr=1e-3, momentum=0.9)
    state = ctx.restore()                                 # None on a first run
    state = fit(ctx, model, optimizer, data.train, data.test, LoopConfig(epochs=5, batch_size=32, seed=0),
                state=state)
    if isinstance(state, Interrupted):
        return state                                      # checkpointed; the worker releases the job
    loss, acc = evaluate(model, data.test.x, data.test.y)

`fit` restores model and optimizer from `state` when given, trains, and checkpoints a plain dict
(the TrainState below) every `checkpoint_every_s` seconds of training compute, at each epoch end,
and when the worker asks it to stop. Pass `save=` to wrap the TrainState in a bigger checkpoint
(e.g. {"phase": "finetune", "train": state}) and hand fit the inner dict on resume. `after_step`
runs after every optimizer step (e.g. re-zero pruned channels) and must be deterministic.

Determinism: each epoch's order is torch.randperm from a generator seeded with (seed, epoch), so
a resume knows the order from the epoch number alone and continues at the exact batch. With the
same seed and thread count, a job killed anywhere and resumed ends bit-identical to an
uninterrupted one, metrics included (on CUDA: on the same GPU model; see jobs/device.py).

Devices: fit trains where the model and data are (jobs/device.py puts them there); batches are
gathered on that device. The TrainState holds CPU tensors whatever the device, so it resumes on
any device.

TrainState keys (all plain tensors and Python values; loads with weights_only=True):
    version                   STATE_VERSION; fit refuses a checkpoint of another version
    model, optimizer          state_dicts (the optimizer is our SGD: momentum buffers, lr, ...)
    epoch, batch, step        epochs completed, batches done in the current epoch, batches overall
    batches_per_epoch         for fractional epoch counts
    epoch_sums, log_sums      [loss_sum, correct, images] of the current epoch / since the last log point
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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweeper.context import Interrupted, JobContext

from .data import Split
from .device import CPU, cpu_state

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
            # on the CPU whatever the device: a checkpoint resumes anywhere (jobs/device.py)
            "momentum_buffers": [None if b is None else b.to(CPU, copy=True) for b in self.momentum_buffers],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        buffers = list(state["momentum_buffers"])
        if len(buffers) != len(self.params):
            raise ValueError(f"optimizer state has {len(buffers)} buffers for {len(self.params)} parameters")
        self.lr, self.momentum, self.weight_decay = state["lr"], state["momentum"], state["weight_decay"]
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


def new_state() -> dict[str, Any]:
    """A TrainState at the very beginning (model and optimizer are filled in at each checkpoint)."""
    return {
        "version": STATE_VERSION,
        "epoch": 0,
        "batch": 0,
        "step": 0,
        "epoch_sums": [0.0, 0, 0],
        "log_sums": [0.0, 0, 0, 0],
        "window": [],
        "train_s": 0.0,
        "time_to_target_s": None,
        "target_step": None,
        "stopped_at_target": False,
        "eval_s": 0.0,
        "checkpoint_s": 0.0,
        "checkpoints": 0,
        "history": {"points": [], "epochs": []},
    }


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
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


def fit(
    ctx: JobContext,
    model: nn.Module,
    optimizer: SGD,
    train: Split,
    test: Split | None,
    cfg: LoopConfig,
    state: dict[str, Any] | None = None,
    *,
    save: Callable[[dict[str, Any]], None] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any] | Interrupted:
    """Train `model` up to cfg.epochs epochs; return the final TrainState, or ctx.interrupted().

    `state` is a TrainState from an earlier checkpoint: model, optimizer, position, RNGs and time
    accounting are restored from it and training continues at the exact batch.
    """
    save = save or ctx.checkpoint
    progress = progress or ctx.progress
    p = cfg.metric_prefix
    if state is None:
        state = new_state()
    else:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"checkpoint has TrainState version {state.get('version')}, expected {STATE_VERSION}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    n, bs = len(train), cfg.batch_size
    batches = math.ceil(n / bs)
    state["batches_per_epoch"] = batches
    window: deque[tuple[int, int]] = deque((int(a), int(b)) for a, b in state["window"])
    window_size = window_batches(cfg, n)
    window_n, window_correct = sum(a for a, _ in window), sum(b for _, b in window)
    # batches are gathered where the data lives (the model's device; see jobs/device.py)
    xbuf = torch.empty((bs, *train.x.shape[1:]), dtype=train.x.dtype, device=train.x.device)  # reused
    ybuf = torch.empty(bs, dtype=train.y.dtype, device=train.y.device)
    on_cpu = train.x.device.type == "cpu"
    last_ckpt_s = state["train_s"]
    last_progress = 0.0

    def checkpoint() -> None:
        nonlocal last_ckpt_s
        tick = time.perf_counter()
        state["model"] = model.state_dict() if on_cpu else cpu_state(model)
        state["optimizer"] = optimizer.state_dict()
        state["rng"] = rng_state()
        state["window"] = [list(w) for w in window]
        state["checkpoints"] += 1
        save(state)
        state["checkpoint_s"] += time.perf_counter() - tick
        last_ckpt_s = state["train_s"]

    model.train()
    while state["epoch"] < cfg.epochs and not state["stopped_at_target"]:
        epoch = state["epoch"]
        order = epoch_order(n, cfg.seed, epoch)
        if not on_cpu:
            order = order.to(train.x.device)
        while state["batch"] < batches:
            if ctx.should_stop():
                checkpoint()
                return ctx.interrupted()
            # -- one batch: everything between the two clock reads is training compute --
            tick = time.perf_counter()
            b = state["batch"]
            idx = order[b * bs : (b + 1) * bs]
            full = len(idx) == bs
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
            loss_sum = loss.item() * len(idx)
            state["batch"] += 1
            state["step"] += 1
            for sums in (state["epoch_sums"], state["log_sums"]):
                sums[0] += loss_sum
                sums[1] += correct
                sums[2] += len(idx)
            state["log_sums"][3] += 1
            window.append((len(idx), correct))
            window_n += len(idx)
            window_correct += correct
            if len(window) > window_size:
                old_n, old_correct = window.popleft()
                window_n -= old_n
                window_correct -= old_correct
            state["train_s"] += time.perf_counter() - tick
            # -- bookkeeping outside the clock --
            step = state["step"]
            if (
                cfg.target_train_acc is not None
                and state["time_to_target_s"] is None
                and len(window) == window_size
                and window_correct >= cfg.target_train_acc * window_n
            ):
                state["time_to_target_s"] = state["train_s"]
                state["target_step"] = step
                ctx.log_metrics({f"{p}time_to_target_s": state["train_s"]}, step=step)
                if cfg.stop_at_target:
                    state["stopped_at_target"] = True
            if state["log_sums"][3] >= cfg.log_every or state["batch"] == batches:
                ls = state["log_sums"]
                point = {"step": step, "epoch": epoch + state["batch"] / batches, "loss": ls[0] / ls[2]}
                point["train_acc"] = ls[1] / ls[2]
                ctx.log_metrics({f"{p}loss": point["loss"], f"{p}train_acc": point["train_acc"]}, step=step)
                point["train_s"] = state["train_s"]
                state["history"]["points"].append(point)
                state["log_sums"] = [0.0, 0, 0, 0]
            if state["train_s"] - last_progress >= 0.5 or state["batch"] == batches:
                last_progress = state["train_s"]
                images = epoch * n + min(state["batch"] * bs, n)
                progress(
                    (epoch + state["batch"] / batches) / cfg.epochs,
                    f"epoch {epoch + 1}/{cfg.epochs} batch {state['batch']}/{batches} loss {loss.item():.3f} "
                    f"acc {window_correct / max(1, window_n):.3f} {images / max(state['train_s'], 1e-9):.0f} img/s",
                )
            if state["stopped_at_target"]:
                break
            if state["batch"] < batches and state["train_s"] - last_ckpt_s >= cfg.checkpoint_every_s:
                checkpoint()
        if state["batch"] == batches:  # a whole epoch: evaluate, log, start the next one
            es = state["epoch_sums"]
            record: dict[str, Any] = {"epoch": epoch + 1, "step": state["step"]}
            record["train_loss"], record["train_acc"] = es[0] / es[2], es[1] / es[2]
            if test is not None:
                tick = time.perf_counter()
                record["test_loss"], record["test_acc"] = evaluate(model, test.x, test.y, cfg.eval_batch_size)
                state["eval_s"] += time.perf_counter() - tick
            ctx.log_metrics({f"{p}epoch_{k}": v for k, v in record.items() if k not in ("epoch", "step")}, epoch + 1)
            record["train_s"] = state["train_s"]
            state["history"]["epochs"].append(record)
            state["epoch"] += 1
            state["batch"] = 0
            state["epoch_sums"] = [0.0, 0, 0]
        checkpoint()
    return state


def summary(state: Mapping[str, Any]) -> dict[str, Any]:
    """The time accounting and target figures of a finished TrainState, for results and history.json."""
    return {
        "epochs": state["epoch"] + state["batch"] / max(1, state.get("batches_per_epoch", 1)),
        "steps": state["step"],
        "total_train_s": state["train_s"],
        "time_to_target_s": state["time_to_target_s"],
        "reached": state["time_to_target_s"] is not None,
        "target_step": state["target_step"],
        "eval_s": state["eval_s"],
        "checkpoint_s": state["checkpoint_s"],
        "checkpoints": state["checkpoints"],
    }
