"""Where a job computes: the `device` param of `train` and `prune` (auto | cpu | cuda).

    dev = pick_device(p.device)            # auto: CUDA when this worker sees a GPU, else CPU
    with job_numerics(dev):                # the job's numerics, restored when it ends
        data = on_device(data, dev)        # the whole set moves once per worker process
        model = build(...).to(dev)
    numerics(dev)                          # what is in effect: {"device", "tf32", "deterministic"}

The worker pins each process to one GPU with CUDA_VISIBLE_DEVICES, so `cuda` means cuda:0 here.
Checkpoints and model files always hold CPU tensors (`cpu_state`) and load with
map_location="cpu": a job started on a GPU VM resumes on a CPU VM and back.

Determinism on CUDA: inside `job_numerics`, `torch.use_deterministic_algorithms(True)` with
CUBLAS_WORKSPACE_CONFIG set before cuBLAS starts (here, at import, which is before any job of
this package touches CUDA). The network's ops (conv, linear, ReLU, max-pool, cross-entropy,
index_select) all have deterministic CUDA kernels, so a resume on the same GPU model with the
same torch is bit-identical. The settings are the job's, not the worker's: they are restored when
the job ends (an exception included), so a later job of the same process (a benchmark's timings)
does not inherit them.

TF32: off for training (`torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32`
set to False inside `job_numerics`). TF32 keeps 10 bits of mantissa: on an Ampere or newer GPU it
would make GPU results differ from CPU ones well beyond rounding, for no measurable speed on nets
this small (a sweep of them is bound by per-batch overhead, not by matmul throughput). With it off,
CPU and GPU differ by float32 rounding only (tests/test_device.py says how close they must be).

Across devices (CPU <-> CUDA) or GPU models the kernels differ and the weights agree only to
rounding: resuming elsewhere continues from the exact checkpoint, but the run does not end
bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from jobs.ml.data import Dataset, Split
from sweeper.outcome import JobFailed

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA work

CPU = torch.device("cpu")
# (what the data is, device) -> its copy there. Keyed by Dataset.identity, never by id(): a job's
# Dataset object is dropped when the job ends, and the next job's new one may get the same id.
_CACHE: dict[tuple[tuple[object, ...], str], Dataset] = {}
_LOCK = threading.Lock()


def pick_device(name: str) -> torch.device:
    """The device for `device: name`; `cuda` without a GPU fails the job at once (retrying cannot help)."""
    if name == "cpu":
        return CPU
    if not torch.cuda.is_available():
        if name == "cuda":
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise JobFailed(
                "device: cuda, but this worker sees no CUDA GPU (torch.cuda.is_available() is False"
                + (f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
                + "); use device: auto (GPU when present, else CPU) or run it where a GPU is",
                retry=False,
            )
        return CPU
    return torch.device("cuda")


TRAINING_TF32 = False  # see the module doc


@contextmanager
def job_numerics(device: torch.device) -> Iterator[None]:
    """The numerics a job trains with on `device`, for the duration of the job only.

    On CUDA: deterministic algorithms, no cuDNN autotuning (its timing-based choice of kernels
    varies run to run), no TF32. On the CPU nothing changes (its kernels here are deterministic).
    The previous settings come back when the block ends, however it ends.
    """
    if device.type != "cuda":
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        torch.use_deterministic_algorithms(True)  # bit-exact resume on the same GPU (see above)
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = TRAINING_TF32
        torch.backends.cudnn.allow_tf32 = TRAINING_TF32
        yield
    finally:
        deterministic, warn_only, benchmark, matmul_tf32, cudnn_tf32 = before
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def numerics(device: torch.device) -> dict[str, Any]:
    """What computing on `device` uses right now (inside a job: the job's settings), for provenance:
    {"device": "cuda:0 NVIDIA H100 80GB HBM3" | "cpu", "tf32": bool, "deterministic": bool}."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = f"cuda:{index} {torch.cuda.get_device_name(index)}"
        tf32 = bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    else:
        name, tf32 = str(device), False  # TF32 is a CUDA format: the CPU computes in float32
    return {"device": name, "tf32": tf32, "deterministic": torch.are_deterministic_algorithms_enabled()}


def on_device(data: Dataset, device: torch.device) -> Dataset:
    """`data` with its tensors on `device` (CPU: itself, no copy); cached per worker process by what
    the data is (Dataset.identity), so a job never gets another job's data."""
    if device.type == "cpu":
        return data
    if data.identity is None:  # not known what it is: move it, do not cache it
        return _moved(data, device)
    key = (data.identity, str(device))
    with _LOCK:
        moved = _CACHE.get(key)
        if moved is None:
            moved = _moved(data, device)
            _CACHE.clear()  # one dataset on the GPU at a time: a worker runs one job at a time
            _CACHE[key] = moved
        return moved


def _moved(data: Dataset, device: torch.device) -> Dataset:
    return Dataset(
        data.name,
        Split(data.train.x.to(device), data.train.y.to(device)),
        Split(data.test.x.to(device), data.test.y.to(device)),
        data.source,
        data.identity,
    )


def clear_cache() -> None:
    """Forget the datasets moved to devices (tests; a worker keeps one for its lifetime)."""
    with _LOCK:
        _CACHE.clear()


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """module.state_dict() with CPU tensors (on CPU: the same tensors, no copy)."""
    return {k: v.cpu() for k, v in module.state_dict().items()}


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
