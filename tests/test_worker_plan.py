"""`sweeper work` without --workers: one worker per core with one thread each, or one per GPU.

The plan (sweeper/running/workerplan.py) is checked for machines we do not have (8 cores, 2 GPUs, little
memory), and for real on this one: the first line says the choice and that many worker
processes start, each with one thread. GPUs are faked the way CUDA itself is told which to use,
CUDA_VISIBLE_DEVICES; noop jobs never touch CUDA, so the pinning shows in the worker logs.
"""

from __future__ import annotations

import re

from sweeper.running.workerplan import MEMORY_PER_WORKER, available_cpus, available_memory, detect_gpus, plan_workers

from .conftest import run_cli

GB = 1_000_000_000


def test_default_is_one_worker_per_core_with_one_thread_each():
    for cores in (1, 2, 8, 64):
        plan = plan_workers(None, None, None, cores=cores, memory=1000 * GB)
        assert (plan.workers, plan.threads) == (cores, 1)
    assert plan_workers(None, None, None, cores=2).describe() == "2 workers x 1 thread (CPU, 2 cores)"
    assert plan_workers(None, None, None, cores=1).describe() == "1 worker x 1 thread (CPU, 1 core)"


def test_threads_per_worker_alone_shares_out_the_cores():
    plan = plan_workers(None, 2, None, cores=8)
    assert (plan.workers, plan.threads) == (4, 2)


def test_explicit_workers_keep_cores_per_worker_threads():
    plan = plan_workers(3, None, None, cores=8, gpus=("0",))
    assert (plan.workers, plan.threads) == (3, 2)
    assert [plan.gpu_of(i) for i in range(3)] == ["0", "0", "0"]


def test_memory_caps_the_default_count():
    plan = plan_workers(None, None, None, cores=64, memory=10 * MEMORY_PER_WORKER + 1)
    assert plan.workers == 10 and plan.capped_by_memory
    assert "capped by memory" in plan.describe()


def test_one_worker_per_gpu_or_several_small_jobs_each():
    plan = plan_workers(None, None, None, cores=16, gpus=("0", "1"))
    assert (plan.workers, plan.threads) == (2, 8)
    assert [plan.gpu_of(i) for i in range(2)] == ["0", "1"]
    assert plan.describe() == "2 workers x 8 threads (2 GPUs (0,1), 16 cores)"
    plan = plan_workers(None, None, 3, cores=16, gpus=("0", "1"))
    assert (plan.workers, plan.threads) == (6, 2)
    assert sorted(plan.gpu_of(i) for i in range(6)) == ["0", "0", "0", "1", "1", "1"]
    assert plan.describe() == "6 workers x 2 threads (2 GPUs (0,1), 3 per GPU, 16 cores)"


def test_gpus_are_read_from_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-5d0e,")
    assert detect_gpus() == ("3", "GPU-5d0e")
    for hidden in ("", "-1", "-1,0"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert detect_gpus() == ()


def _work(tmp_path, *args: str, **env: str):
    grid = tmp_path / "g.yaml"
    grid.write_text("sweep: p\nstages:\n  a: {kind: noop, grid: {seed: [1, 2, 3, 4, 5, 6]}}\n")
    state = tmp_path / "state"
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    proc = run_cli("work", "--state", str(state), "--no-tracking", *args, **env)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.splitlines()


def test_work_without_options_starts_one_single_threaded_worker_per_core(tmp_path):
    lines = _work(tmp_path, CUDA_VISIBLE_DEVICES="")
    cores = available_cpus()
    memory = available_memory()
    workers = cores if memory is None else min(cores, max(1, memory // MEMORY_PER_WORKER))
    plural = lambda n, w: f"{n} {w}" + ("" if n == 1 else "s")  # noqa: E731
    assert lines[0].startswith(f"{plural(workers, 'worker')} x 1 thread (CPU, {plural(cores, 'core')})"), lines[0]
    started = [ln for ln in lines if re.search(r"worker \d+ started on .* \(1 thread\(s\)", ln)]
    assert len(started) == workers, "\n".join(lines)
    assert len({ln.split()[2] for ln in started}) == workers  # distinct processes


def test_jobs_per_gpu_pins_each_worker_with_cuda_visible_devices(tmp_path):
    lines = _work(tmp_path, "--jobs-per-gpu", "2", CUDA_VISIBLE_DEVICES="5,7")
    assert lines[0].startswith("4 workers x "), lines[0]
    assert "(2 GPUs (5,7), 2 per GPU," in lines[0]
    pinned = sorted(re.search(r"pinned to GPU (\S+)", ln).group(1) for ln in lines if "pinned to GPU" in ln)
    assert pinned == ["5", "5", "7", "7"], "\n".join(lines)
