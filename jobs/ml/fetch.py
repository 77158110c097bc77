"""`python -m jobs.ml.data ensure`: make sure Fashion-MNIST is on this machine before the first job.

    python -m jobs.ml.data ensure [--data-dir DIR] [--state DIR]

1. If a source the jobs read (jobs/ml/sources.py) already has the four files: say where, exit 0.
   No torch import and no network: milliseconds, so the quick start runs it every time.
2. Else, where apt-get exists and we are root (or `sudo -n` works): apt-get update, then
   apt-get install dataset-fashion-mnist, which puts the files in /usr/share/datasets/fashion-mnist.
   This is the way on an offline Debian machine whose package mirror is reachable.
3. Else, when torchvision's mirror answers: download into <state>/data/FashionMNIST/raw.
4. Else exit 1 with what each step said and the three ways to get the data. No traceback.

Test seam: SWEEPER_APT_GET names the apt-get program to run, as given (no sudo); set it empty
to never use apt. The tests use a stand-in that copies the real files where the package would.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from jobs.ml.sources import (
    APT_PACKAGE,
    WAYS,
    download_dir,
    download_into,
    locate,
    mirror_unreachable,
    missing,
    system_dir,
)
from sweeper.config import DEFAULT_STATE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.ml.data", description="Fashion-MNIST on this machine.")
    commands = parser.add_subparsers(dest="command", required=True)
    ensure_p = commands.add_parser(
        "ensure",
        help="find Fashion-MNIST, or install/download it (apt-get install dataset-fashion-mnist, else torchvision)",
    )
    ensure_p.add_argument("--data-dir", type=Path, help="a directory with the four IDX files, looked in first")
    ensure_p.add_argument(
        "--state", type=Path, help=f"the state directory, for the download (default: $SWEEPER_STATE or {DEFAULT_STATE})"
    )
    args = parser.parse_args(argv)
    state = Path(args.state or os.environ.get("SWEEPER_STATE") or DEFAULT_STATE).expanduser()
    return ensure(data_dir=args.data_dir, state_dir=state)


def ensure(*, data_dir: Path | None, state_dir: Path) -> int:
    """0 when the data is (now) where the jobs look; 1, with the reasons and the ways, when not."""
    found, _ = locate(data_dir=data_dir, state_dir=state_dir)
    if found is not None:
        return _found(found)
    _say(f"Fashion-MNIST is not on this machine (looked in --data-dir, {system_dir()}, {download_dir(state_dir)})")

    attempts: list[str] = []
    apt, why_not = apt_get()
    if apt is None:
        attempts.append(f"apt-get install {APT_PACKAGE}: {why_not}")
    else:
        problem = _apt_install(apt)
        found, _ = locate(data_dir=data_dir, state_dir=state_dir)
        if found is not None:
            return _found(found)
        attempts.append(
            f"apt-get install {APT_PACKAGE}: {problem or f'installed, but {system_dir()} is {missing(system_dir())}'}"
        )

    raw = download_dir(state_dir)
    problem = mirror_unreachable()
    if problem is None:
        _say(f"downloading Fashion-MNIST with torchvision into {raw} (about 30 MB) ...")
        started = time.monotonic()
        problem = download_into(state_dir)
    if problem is None:
        _say(f"downloaded in {time.monotonic() - started:.0f} s")
        found, _ = locate(data_dir=data_dir, state_dir=state_dir)
        if found is not None:
            return _found(found)
        problem = f"{raw} is {missing(raw)}"
    attempts.append(f"download into {raw}: {problem}")

    print(
        "Fashion-MNIST is not on this machine, and it could not be fetched:\n"
        + "\n".join(f"  - {a}" for a in attempts)
        + "\n"
        + WAYS,
        file=sys.stderr,
    )
    return 1


def apt_get() -> tuple[list[str] | None, str]:
    """The command prefix that runs apt-get with the rights to install, or None and why not."""
    override = os.environ.get("SWEEPER_APT_GET")
    if override is not None:
        return ([override], "") if override else (None, "switched off (SWEEPER_APT_GET is empty)")
    apt = shutil.which("apt-get")
    if apt is None:
        return None, "apt-get is not on this machine (not Debian or Ubuntu)"
    if getattr(os, "geteuid", lambda: -1)() == 0:
        return [apt], ""
    sudo = shutil.which("sudo")
    if sudo and subprocess.run([sudo, "-n", "true"], capture_output=True, check=False).returncode == 0:
        return [sudo, "-n", apt], ""
    return None, f"not root, and sudo needs a password: run `sudo apt-get install {APT_PACKAGE}` yourself"


def _apt_install(apt: list[str]) -> str | None:
    """apt-get update (its failure is not fatal: the lists on disk may do), then install; None or why not.

    apt-get's own output streams through: it is the progress of the longest step.
    """
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _say(f"installing the Debian package {APT_PACKAGE} (about 30 MB): apt-get update ...")
    update = _run([*apt, "-q", "update"], env)
    if update:
        _say(f"apt-get update failed ({update}); trying the install with the package lists already here")
    _say(f"apt-get install {APT_PACKAGE} ...")
    return _run([*apt, "-q", "-y", "install", "--no-install-recommends", APT_PACKAGE], env)


def _run(cmd: list[str], env: dict[str, str]) -> str | None:
    started = time.monotonic()
    try:
        # stdout to our stderr: stdout carries only the answer (the directory), for scripts
        code = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=2, check=False).returncode
    except OSError as exc:
        return f"cannot run {cmd[0]} ({exc})"
    if code != 0:
        return f"`{' '.join(cmd)}` exited {code}"
    _say(f"  done in {time.monotonic() - started:.0f} s")
    return None


def _found(found: tuple[Path, str]) -> int:
    directory, how = found
    print(f"Fashion-MNIST: {directory} ({how})")
    return 0


def _say(line: str) -> None:
    print(f"ensure: {line}", file=sys.stderr, flush=True)
