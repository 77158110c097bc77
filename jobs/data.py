"""Fashion-MNIST as normalized float tensors in memory, loaded once per worker process.

Where the data comes from, in this order (the first that has all four IDX files wins):

1. the job's `data_dir` param, or the worker's `--data-dir` option;
2. /usr/share/datasets/fashion-mnist/ (Debian package `dataset-fashion-mnist`;
   the env var SWEEPER_FMNIST_SYSTEM_DIR points elsewhere);
3. <state>/data/FashionMNIST/raw/, downloaded there by torchvision when the machine is online.

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

import torch

from sweeper.context import JobFailed

MEAN, STD = 0.2860, 0.3530  # of the Fashion-MNIST training images, scaled to [0, 1]
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 12_000, 2_000  # default sizes of `dataset: synthetic`


class DataNotFound(JobFailed):
    """No source has the dataset. The message names every source tried and how to fill it."""


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
    return Dataset(full.name, full.train.head(train_subset), full.test.head(test_subset), full.source)


def fashion_mnist(
    *, data_dir: str | os.PathLike[str] | None = None, state_dir: Path | None = None, download: bool = True
) -> Dataset:
    """The full Fashion-MNIST set from the first source that has it (cached per process)."""
    directory, how = find_fashion_mnist(data_dir=data_dir, state_dir=state_dir, download=download)
    key = ("fashion-mnist", str(directory.resolve()))
    with _LOCK:
        if key not in _CACHE:
            paths = {k: _idx_path(directory, v) for k, v in FILES.items()}
            train = Split(_images(read_idx(paths["train_images"])), _labels(read_idx(paths["train_labels"])))
            test = Split(_images(read_idx(paths["test_images"])), _labels(read_idx(paths["test_labels"])))
            for split, what in ((train, "train"), (test, "t10k")):
                if split.x.shape[0] != len(split):
                    raise DataCorrupt(
                        f"{directory}: {what} images ({split.x.shape[0]}) and labels ({len(split)}) differ in count"
                    )
            _CACHE[key] = Dataset("fashion-mnist", train, test, f"{directory} ({how})")
        return _CACHE[key]


def system_dir() -> Path:
    return Path(os.environ.get("SWEEPER_FMNIST_SYSTEM_DIR") or SYSTEM_DIR)


def download_dir(state_dir: Path | None) -> Path:
    """Where torchvision puts its download: <state>/data/FashionMNIST/raw."""
    return Path(state_dir or "state") / "data" / "FashionMNIST" / "raw"


def find_fashion_mnist(
    *, data_dir: str | os.PathLike[str] | None = None, state_dir: Path | None = None, download: bool = True
) -> tuple[Path, str]:
    """(directory holding the four IDX files, which source it was); DataNotFound if none has them."""
    tried: list[str] = []
    if data_dir:
        d = Path(data_dir).expanduser()
        if _has_all(d):
            return d, "data_dir"
        tried.append(f"  1. data_dir {d}: {_missing(d)}")
    else:
        tried.append("  1. data_dir: not given (set the `data_dir` param or `sweeper work --data-dir DIR`)")
    sysd = system_dir()
    if _has_all(sysd):
        return sysd, "system package"
    tried.append(f"  2. {sysd}: {_missing(sysd)} (install it: apt-get install dataset-fashion-mnist)")
    raw = download_dir(state_dir)
    if _has_all(raw):
        return raw, "downloaded earlier"
    if download:
        from filelock import FileLock

        raw.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(raw.parent / ".download.lock")):  # two workers, one download
            if _has_all(raw):
                return raw, "downloaded by another worker"
            problem = _download(raw.parent.parent)
        if problem is None and _has_all(raw):
            return raw, "downloaded now"
        tried.append(f"  3. download into {raw}: failed: {problem or _missing(raw)}")
    else:
        tried.append(f"  3. download into {raw}: switched off")
    raise DataNotFound(
        "Fashion-MNIST not found. Looked in:\n"
        + "\n".join(tried)
        + "\nGet it by one of: pointing data_dir (or --data-dir) at a directory with the four files "
        + ", ".join(f"{v}.gz" for v in FILES.values())
        + "; installing the Debian package dataset-fashion-mnist; or running one worker on a machine"
        " that is online (torchvision downloads it into <state>/data)."
    )


def _idx_path(directory: Path, stem: str) -> Path:
    gz = directory / f"{stem}.gz"
    return gz if gz.exists() else directory / stem


def _has_all(directory: Path) -> bool:
    return all(_idx_path(directory, stem).is_file() for stem in FILES.values())


def _missing(directory: Path) -> str:
    if not directory.is_dir():
        return "no such directory"
    missing = [f"{stem}[.gz]" for stem in FILES.values() if not _idx_path(directory, stem).is_file()]
    return "missing " + ", ".join(missing)


def _download(root: Path) -> str | None:
    """torchvision's download of the four files into root/FashionMNIST/raw; the error text or None."""
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError as exc:
        return f"torchvision is not importable ({exc})"
    try:
        root.mkdir(parents=True, exist_ok=True)
        FashionMNIST(str(root), train=True, download=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        return " ".join(line.strip() for line in first[:3])[:300] or type(exc).__name__
    return None


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
            got = f.readinto(memoryview(out.numpy()))
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
