"""How many worker processes `sweeper work` runs here, with how many threads, on which GPU.

    no GPU:   one worker per core, one torch thread each (BENCHMARKS.md: one thread per process
              beats two in one on these small nets), capped so each worker has MEMORY_PER_WORKER
    GPUs:     one worker per GPU, or `--jobs-per-gpu K` small jobs sharing each; every worker is
              pinned to its GPU with CUDA_VISIBLE_DEVICES, and the cores are shared out as threads

GPUs are found without importing torch (the CLI must start fast, and `status`/`enqueue` never
load it): CUDA_VISIBLE_DEVICES when it is set, else the lines of `nvidia-smi -L`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

MEMORY_PER_WORKER = 1_500_000_000  # a training worker peaks near 1.1 GB (BENCHMARKS.md), plus headroom


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    threads: int
    cores: int
    gpus: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES value of worker i: gpus[i % len(gpus)]
    capped_by_memory: bool = False

    def gpu_of(self, index: int) -> str | None:
        return self.gpus[index % len(self.gpus)] if self.gpus else None

    def describe(self) -> str:
        """The first line `sweeper work` prints, e.g. '2 workers x 1 thread (CPU, 2 cores)'."""
        head = f"{_n(self.workers, 'worker')} x {_n(self.threads, 'thread')}"
        if self.gpus:
            per = self.workers / len(self.gpus)
            share = f", {per:g} per GPU" if per != 1 else ""
            where = f"{_n(len(self.gpus), 'GPU')} ({','.join(self.gpus)}){share}, {_n(self.cores, 'core')}"
        else:
            where = f"CPU, {_n(self.cores, 'core')}"
        notes = []
        if self.capped_by_memory:
            notes.append(f"capped by memory: {MEMORY_PER_WORKER / 1e9:.1f} GB per worker")
        return f"{head} ({where})" + (f"; {'; '.join(notes)}" if notes else "")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def plan_workers(
    workers: int | None,
    threads: int | None,
    jobs_per_gpu: int | None,
    *,
    cores: int,
    gpus: tuple[str, ...] = (),
    memory: int | None = None,
) -> WorkerPlan:
    """The plan for the given options (None: choose) on a machine with these cores, GPUs and free memory."""
    cores = max(1, cores)
    if workers is None:
        per_gpu = max(1, jobs_per_gpu or 1)
        workers = len(gpus) * per_gpu if gpus else max(1, cores // max(1, threads or 1))
        fits = max(1, memory // MEMORY_PER_WORKER) if memory is not None else None
        capped = fits is not None and workers > fits
        if fits is not None and capped:
            workers = fits
    else:
        capped = False
    threads = max(1, threads or cores // workers)
    return WorkerPlan(workers, threads, cores, gpus, capped)


def plan_here(workers: int | None, threads: int | None, jobs_per_gpu: int | None) -> WorkerPlan:
    return plan_workers(
        workers, threads, jobs_per_gpu, cores=available_cpus(), gpus=detect_gpus(), memory=available_memory()
    )


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """MemAvailable in bytes (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def detect_gpus() -> tuple[str, ...]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        # "" or "-1" hide every GPU; CUDA stops at the first invalid entry, so do we
        found = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry or entry.startswith("-"):
                break
            found.append(entry)
        return tuple(found)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU ")))
