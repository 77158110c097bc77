"""Where a job computes: the `device` param of `train` and `prune` (auto | cpu | cuda).

    dev = pick_device(p.device)            # auto: CUDA when this worker sees a GPU, else CPU
    data = on_device(data, dev)            # the whole set moves once per worker process
    model = build(...).to(dev)

The worker pins each process to one GPU with CUDA_VISIBLE_DEVICES, so `cuda` means cuda:0 here.
Checkpoints and model files always hold CPU tensors (`cpu_state`) and load with
map_location="cpu": a job started on a GPU VM resumes on a CPU VM and back.

Determinism on CUDA: `torch.use_deterministic_algorithms(True)` with CUBLAS_WORKSPACE_CONFIG set
before cuBLAS starts (here, at import, which is before any job of this package touches CUDA).
The network's ops (conv, linear, ReLU, max-pool, cross-entropy, index_select) all have
deterministic CUDA kernels, so a resume on the same GPU model with the same torch is
bit-identical. Across devices (CPU <-> CUDA) or GPU models the kernels differ and the weights
agree only to rounding: resuming elsewhere continues from the exact checkpoint, but the run does
not end bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import os
import threading

import torch

from jobs.ml.data import Dataset, Split
from sweeper.outcome import JobFailed

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA work

CPU = torch.device("cpu")
_CACHE: dict[tuple[int, str], Dataset] = {}  # (id of the CPU dataset, device) -> its copy there
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
    device = torch.device("cuda")
    torch.use_deterministic_algorithms(True)  # bit-exact resume on the same GPU (see above)
    torch.backends.cudnn.benchmark = False  # its timing-based choice of kernels varies run to run
    return device


def on_device(data: Dataset, device: torch.device) -> Dataset:
    """`data` with its tensors on `device` (CPU: itself, no copy); cached per worker process."""
    if device.type == "cpu":
        return data
    key = (id(data), str(device))
    with _LOCK:
        moved = _CACHE.get(key)
        if moved is None:
            moved = Dataset(
                data.name,
                Split(data.train.x.to(device), data.train.y.to(device)),
                Split(data.test.x.to(device), data.test.y.to(device)),
                data.source,
            )
            _CACHE.clear()  # one dataset on the GPU at a time: a worker runs one job at a time
            _CACHE[key] = moved
        return moved


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """module.state_dict() with CPU tensors (on CPU: the same tensors, no copy)."""
    return {k: v.cpu() for k, v in module.state_dict().items()}


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
