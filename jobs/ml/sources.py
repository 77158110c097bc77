"""Where Fashion-MNIST is on this machine, and the download that fills the last place.

Looked for in this order; the first directory that has all four IDX files wins:

1. the job's `data_dir` param, or the worker's `--data-dir` option;
2. /usr/share/datasets/fashion-mnist/ (Debian package `dataset-fashion-mnist`;
   the env var SWEEPER_FMNIST_SYSTEM_DIR points elsewhere);
3. <state>/data/FashionMNIST/raw/, downloaded there by torchvision when the machine is online.

No torch here: `python -m jobs.ml.data ensure` runs this on the quick start's path, where importing
torch would cost seconds for a check that takes milliseconds. torchvision is imported only to
download, after a quick probe says its mirror answers.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from sweeper.outcome import JobFailed

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_PACKAGE = "dataset-fashion-mnist"
ENSURE = "python -m jobs.ml.data ensure"
# torchvision's FashionMNIST.mirrors[0]; probed before torchvision (seconds to import) is loaded
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataNotFound(JobFailed):
    """No source has the dataset. The first line says what to run; the rest names every source tried."""


def system_dir() -> Path:
    return Path(os.environ.get("SWEEPER_FMNIST_SYSTEM_DIR") or SYSTEM_DIR)


def download_dir(state_dir: Path | None) -> Path:
    """Where torchvision puts its download: <state>/data/FashionMNIST/raw."""
    return Path(state_dir or "state") / "data" / "FashionMNIST" / "raw"


def find_fashion_mnist(
    *, data_dir: str | os.PathLike[str] | None = None, state_dir: Path | None = None, download: bool = True
) -> tuple[Path, str]:
    """(directory holding the four IDX files, which source it was); DataNotFound if none has them."""
    found, tried = locate(data_dir=data_dir, state_dir=state_dir)
    if found is not None:
        return found
    raw = download_dir(state_dir)
    if download:
        problem = download_into(state_dir)
        if problem is None:
            return raw, "downloaded now"
        tried.append(f"  3. download into {raw}: failed: {problem}")
    else:
        tried.append(f"  3. download into {raw}: switched off")
    raise DataNotFound(not_found_message(tried))


def locate(
    *, data_dir: str | os.PathLike[str] | None = None, state_dir: Path | None = None
) -> tuple[tuple[Path, str] | None, list[str]]:
    """The first source that already has the files, without downloading; else None and what was tried."""
    tried: list[str] = []
    if data_dir:
        d = Path(data_dir).expanduser()
        if has_all(d):
            return (d, "data_dir"), tried
        tried.append(f"  1. data_dir {d}: {missing(d)}")
    else:
        tried.append("  1. data_dir: not given (set the `data_dir` param or `sweeper work --data-dir DIR`)")
    sysd = system_dir()
    if has_all(sysd):
        return (sysd, "system package"), tried
    tried.append(f"  2. {sysd}: {missing(sysd)} (install it: apt-get install {APT_PACKAGE})")
    raw = download_dir(state_dir)
    if has_all(raw):
        return (raw, "downloaded earlier"), tried
    return None, tried


def not_found_message(tried: list[str]) -> str:
    # The first line is all that `sweeper status` and the worker log show: it must say what to do.
    return (
        f"Fashion-MNIST not found: run `{ENSURE}` (or apt-get install {APT_PACKAGE}, "
        "or sweeper work --data-dir DIR)\n"
        "Looked in:\n" + "\n".join(tried) + "\n" + WAYS
    )


WAYS = (
    "Get it one of three ways:\n"
    f"  1. apt-get install {APT_PACKAGE} (Debian/Ubuntu, as root; needs the package mirror, not the internet):\n"
    f"     it puts the files in {SYSTEM_DIR};\n"
    f"  2. online, `{ENSURE}` downloads them with torchvision into <state>/data/FashionMNIST/raw\n"
    "     (or copy that folder from a machine where it ran);\n"
    "  3. any directory with the four files "
    + ", ".join(f"{v}.gz" for v in FILES.values())
    + " (gzipped or not):\n     `sweeper work --data-dir DIR` or the `data_dir` param."
)


def idx_path(directory: Path, stem: str) -> Path:
    gz = directory / f"{stem}.gz"
    return gz if gz.exists() else directory / stem


def has_all(directory: Path) -> bool:
    return all(idx_path(directory, stem).is_file() for stem in FILES.values())


def missing(directory: Path) -> str:
    if not directory.is_dir():
        return "no such directory"
    absent = [f"{stem}[.gz]" for stem in FILES.values() if not idx_path(directory, stem).is_file()]
    return "missing " + ", ".join(absent)


def download_into(state_dir: Path | None) -> str | None:
    """torchvision's download into <state>/data/FashionMNIST/raw; None on success, else why not (one line).

    One download at a time per state directory: a second worker waits and then finds the files.
    """
    from filelock import FileLock

    raw = download_dir(state_dir)
    raw.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(raw.parent / ".download.lock")):
        if has_all(raw):
            return None
        problem = mirror_unreachable() or _torchvision_download(raw.parent.parent)
    if problem is None and not has_all(raw):
        problem = f"torchvision finished but {raw} is {missing(raw)}"
    return problem


def mirror_unreachable(timeout: float = 10.0) -> str | None:
    """None when torchvision's mirror answers; else why not. Honors http(s)_proxy, as torchvision does.

    Without this, a machine whose firewall drops packets would sit in torchvision's urlopen (no
    timeout) instead of failing with a message.
    """
    request = urllib.request.Request(MIRROR, method="HEAD", headers={"User-Agent": "sweeper"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered (the bucket's index may be 403/404): the files are what count
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{MIRROR} is unreachable ({reason}); is this machine offline?"


def _torchvision_download(root: Path) -> str | None:
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
