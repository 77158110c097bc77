"""Fashion-MNIST as normalized float tensors in memory, loaded once per worker process.

Where the data comes from (data_dir, the Debian package's directory, a torchvision download into
<state>/data) is jobs/ml/sources.py. `python -m jobs.ml.data ensure` makes sure one of them has it
(jobs/ml/fetch.py): the quick start runs it before the first job.

The IDX files are read here directly (gzip + torch.frombuffer): the whole set becomes two
tensors, (N, 1, 28, 28) float32 normalized with the training set's mean and std, and (N,) int64
labels. Jobs slice batches out of them with index_select; there is no per-sample Python, no PIL.

`dataset: synthetic` is a deterministic, learnable stand-in of the same shape for fast tests:
ten fixed random "prototype" images plus noise, the same for every job and every process.
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from jobs.ml.sources import FILES, SYSTEM_DIR, DataNotFound, download_dir, find_fashion_mnist, idx_path, system_dir  # noqa: F401  (callers import them from here)
from sweeper.outcome import JobFailed

if __name__ == "__main__":  # `python -m jobs.ml.data ensure`, on the quick start's path: no torch for a check
    from jobs.ml.fetch import main

    raise SystemExit(main())

import torch

MEAN, STD = 0.2860, 0.3530  # of the Fashion-MNIST training images, scaled to [0, 1]
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 12_000, 2_000  # default sizes of `dataset: synthetic`


class DataCorrupt(JobFailed):
    """A dataset file exists but cannot be read as what it claims to be."""


@dataclass(frozen=True)
class Split:
    """Images (N, 1, 28, 28) float32, normalized, and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def head(self, n: int | None) -> Split:
        """The first n examples (a view, no copy). Fashion-MNIST files are already shuffled."""
        if n is None or n >= len(self):
            return self
        return Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    source: str  # where it came from, for the job's log
    # What the data is, for caches: name, source, the full set's sizes and which rows of each split
    # (load_dataset takes the first n). None: not known (built by hand), so never served from a cache.
    identity: tuple[object, ...] | None = None


# One copy per process, shared by every job the worker runs: loading takes seconds, a job
# reuses it in microseconds. Keyed by the resolved directory (or synthetic sizes).
_CACHE: dict[tuple[str, ...], Dataset] = {}
_LOCK = threading.Lock()


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    state_dir: Path | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    download: bool = True,
) -> Dataset:
    """The dataset `name` ('fashion-mnist' or 'synthetic'), cut to the subset sizes."""
    if name == "synthetic":
        full = synthetic(train_subset or SYNTHETIC_TRAIN, test_subset or SYNTHETIC_TEST)
    elif name == "fashion-mnist":
        full = fashion_mnist(data_dir=data_dir, state_dir=state_dir, download=download)
    else:
        raise JobFailed(f"unknown dataset '{name}'; use fashion-mnist or synthetic")
    train, test = full.train.head(train_subset), full.test.head(test_subset)
    # the full sizes matter too: `synthetic` draws its test set after its training set
    identity = (full.name, full.source, len(full.train), len(full.test), ("first", len(train)), ("first", len(test)))
    return Dataset(full.name, train, test, full.source, identity)


def fashion_mnist(
    *, data_dir: str | os.PathLike[str] | None = None, state_dir: Path | None = None, download: bool = True
) -> Dataset:
    """The full Fashion-MNIST set from the first source that has it (cached per process)."""
    directory, how = find_fashion_mnist(data_dir=data_dir, state_dir=state_dir, download=download)
    key = ("fashion-mnist", str(directory.resolve()))
    with _LOCK:
        if key not in _CACHE:
            paths = {k: idx_path(directory, v) for k, v in FILES.items()}
            train = Split(_images(read_idx(paths["train_images"])), _labels(read_idx(paths["train_labels"])))
            test = Split(_images(read_idx(paths["test_images"])), _labels(read_idx(paths["test_labels"])))
            for split, what in ((train, "train"), (test, "t10k")):
                if split.x.shape[0] != len(split):
                    raise DataCorrupt(
                        f"{directory}: {what} images ({split.x.shape[0]}) and labels ({len(split)}) differ in count"
                    )
            _CACHE[key] = Dataset("fashion-mnist", train, test, f"{directory} ({how})")
        return _CACHE[key]


# -- IDX files ---------------------------------------------------------------------------------

_IDX_TYPES = {0x08: torch.uint8}


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (gzipped or not) as a uint8 tensor of its declared shape; DataCorrupt otherwise.

    Streams straight into the tensor's storage: no second copy of the file in memory.
    """
    hint = (
        "delete it and get a fresh copy (apt-get install --reinstall dataset-fashion-mnist, or let "
        "torchvision download it again)"
    )
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES or magic[3] == 0:
                raise DataCorrupt(f"{path} is corrupted: not an IDX file of unsigned bytes (bad magic number); {hint}")
            dims = f.read(4 * magic[3])
            if len(dims) < 4 * magic[3]:
                raise DataCorrupt(f"{path} is corrupted: its IDX header is cut short; {hint}")
            shape = [int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(magic[3])]
            count = 1
            for n in shape:
                count *= n
            out = torch.empty(count, dtype=torch.uint8)
            got = f.readinto(out.numpy().data)  # straight into the tensor's memory
            extra = len(f.read(1))
    except (OSError, EOFError, zlib.error) as exc:
        raise DataCorrupt(f"{path} is corrupted: cannot read it ({exc}); {hint}") from None
    if got != count or extra:
        raise DataCorrupt(
            f"{path} is corrupted: its header says shape {tuple(shape)} ({count} values) but it holds "
            f"{'fewer' if got != count else 'more'}; {hint}"
        )
    return out.reshape(shape)


def _images(raw: torch.Tensor) -> torch.Tensor:
    if raw.dim() != 3 or tuple(raw.shape[1:]) != (28, 28):
        raise DataCorrupt(f"expected 28x28 images, found an array of shape {tuple(raw.shape)}")
    # In place after one conversion: peak memory is one float copy, not three.
    return raw.to(torch.float32).div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1).contiguous()


def _labels(raw: torch.Tensor) -> torch.Tensor:
    if raw.dim() != 1:
        raise DataCorrupt(f"expected a vector of labels, found an array of shape {tuple(raw.shape)}")
    labels = raw.to(torch.int64)
    if len(labels) and int(labels.max()) > 9:
        raise DataCorrupt(f"labels must be 0..9, found {int(labels.max())}")
    return labels


# -- synthetic ---------------------------------------------------------------------------------


def synthetic(n_train: int = SYNTHETIC_TRAIN, n_test: int = SYNTHETIC_TEST) -> Dataset:
    """Ten fixed blurry prototype images plus heavy noise: learnable, not at once.

    A small net at lr 0.01 reaches about 90% test accuracy after one epoch of 6000 images, and its
    running train accuracy crosses 0.90 during the second epoch: like Fashion-MNIST, in miniature.

    Generated from a fixed seed, independent of the job's seed, so it is "the same dataset" for
    every job, like a real one; test examples are drawn from the same distribution.
    """
    key = ("synthetic", str(n_train), str(n_test))
    with _LOCK:
        if key not in _CACHE:
            g = torch.Generator().manual_seed(20240422)
            protos = torch.randn(10, 1, 28, 28, generator=g)
            protos = torch.nn.functional.avg_pool2d(protos, 5, stride=1, padding=2) * 0.8

            def draw(n: int) -> Split:
                y = torch.randint(0, 10, (n,), generator=g)
                x = protos[y] + torch.randn(n, 1, 28, 28, generator=g)
                return Split(x.contiguous(), y)

            _CACHE[key] = Dataset("synthetic", draw(n_train), draw(n_test), "synthetic (generated)")
        return _CACHE[key]


def clear_cache() -> None:
    """Forget the loaded datasets (tests; a worker keeps them for its lifetime)."""
    with _LOCK:
        _CACHE.clear()
