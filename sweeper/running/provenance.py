"""Where and on what an attempt ran: recorded per attempt (db.attempts), shown by `show` and MLflow.

    sweeper_version, python, host, device    this worker
    load_1m                                  the machine's 1-minute load average as the attempt starts
    torch_version                            when the kind's code imports torch
    code                                     sha256 (16 hex) of the kind's source: its module and
                                             every file of its package that it imports, transitively
    code_files, git_commit, git_dirty        how many files that hash covers; the git checkout they
                                             are in (dirty: uncommitted changes to tracked files)

The files are found by reading import statements (ast), not by importing: the hash does not
depend on what else the worker process happened to import before, and a torch-free kind never
pays for torch. A job kind adds its own fields (the device it picked, numerics settings) with
`ctx.add_provenance({...})`. Computed once per kind per worker process: the code a process runs
is the code it imported once.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import socket
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import sweeper
from sweeper.grid import registry


def attempt_provenance(kind: str, device: str = "cpu") -> dict[str, Any]:
    """The provenance of an attempt of a `kind` job on this worker (`device`: the worker's guess;
    the kind may correct it with ctx.add_provenance)."""
    found: dict[str, Any] = {
        "sweeper_version": sweeper.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "device": device,
        # The machine's 1-minute load average as the attempt starts: times from a loaded machine
        # read differently, and a report can say how loaded the run was (None where unknown).
        "load_1m": _load_1m(),
    }
    found.update(code_provenance(kind))
    return found


def _load_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on Windows
        return None


@cache
def code_provenance(kind: str) -> dict[str, Any]:
    try:
        return _code_provenance(registry.lookup(kind).target.partition(":")[0])
    except Exception:  # an unknown kind fails the job anyway (registry.load_run says why); an
        return {"code": None}  # unreadable file must not fail a job that would run


def _code_provenance(module: str) -> dict[str, Any]:
    files, imports = _module_files(module)
    digest = hashlib.sha256()
    root = _package_root(module)
    for path in sorted(files):
        name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else path.name
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    out: dict[str, Any] = {"code": digest.hexdigest()[:16], "code_files": len(files)}
    if "torch" in imports:
        out["torch_version"] = _version("torch")
    out.update(_git(sorted(files)))
    return out


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_root(module: str) -> Path | None:
    """The directory that holds the module's top-level package (or the module itself)."""
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin)
    return origin.parent.parent if spec.submodule_search_locations else origin.parent


def _module_file(name: str, root: Path) -> Path | None:
    """The file of module `name` (of the package under `root`) without importing it."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_files(module: str) -> tuple[set[Path], set[str]]:
    """Files of `module` and of the modules of its own top-level package it imports (transitively),
    with the package __init__ files on the way; and the top-level names of everything imported."""
    top = module.split(".")[0]
    root = _package_root(module)
    if root is None:
        return set(), set()
    files: set[Path] = set()
    tops: set[str] = set()
    todo = [module]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name, root)
        if path is None:
            continue
        files.add(path)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the packages on the way
        is_package = path.name == "__init__.py"
        for found in _imports(path, name, is_package):
            tops.add(found.split(".")[0])
            if found.split(".")[0] == top:
                todo.append(found)
    return files, tops


def _imports(path: Path, name: str, is_package: bool) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (SyntaxError, ValueError):
        return []
    package = name if is_package else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            if not mod:
                continue
            found.append(mod)
            # `from jobs.ml import training` imports the module jobs.ml.training
            found.extend(f"{mod}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _git(files: list[Path]) -> dict[str, Any]:
    """The commit of the git checkout the code is in, and whether it has uncommitted changes."""
    if not files:
        return {}
    where = files[0].parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


def worker_device(gpu: str | None) -> str:
    """The worker's device before the kind says more: its pinned GPU, else the CPU."""
    return f"cuda (GPU {gpu})" if gpu is not None else "cpu"


__all__ = ["attempt_provenance", "code_provenance", "worker_device"]
