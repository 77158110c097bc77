"""SIGKILL a mirrored worker at 20 random points (some in the middle of a snapshot write); each
replacement starts on a fresh local disk, as a new Colab VM would, and restores from the mount.

At the end every job is done exactly once (one line in its side-effect counter), nothing is
stuck, and every job that was cut off after a checkpoint continued from its newest checkpoint
(including ones written after the last snapshot, found by scanning), never from zero.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import run_cli, start_worker, stop_process, wait_for

pytestmark = pytest.mark.slow

KILLS = 20
JOBS = 4
STEPS = 40
SNAPSHOT_DELAY_S = 0.4  # a slow "network mount": each snapshot write takes this long


def _newest_checkpoint_step(job_dir: Path) -> int:
    """The step in the newest checkpoint file of a job that passes its sha256 (0 if none)."""
    import hashlib

    import torch

    for path in sorted(job_dir.glob("*.ckpt"), reverse=True):
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != path.name.split(".")[1]:
            continue
        return int(torch.load(io.BytesIO(data), weights_only=True)["step"])
    return 0


def _checkpoint_files(state: Path) -> set[Path]:
    return set(state.glob("checkpoints/kill/*/*.ckpt"))


def _snapshot_temp_files(state: Path) -> list[Path]:
    return list((state / "snapshots").glob(".queue.*.tmp"))


def test_sigkill_at_random_points_loses_nothing_and_runs_each_job_once(tmp_path):
    rng = random.Random(7)
    state, counts = tmp_path / "state", tmp_path / "counts"
    counts.mkdir()
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "sweep: kill\nstages:\n  s:\n    kind: noop\n    max_interruptions: 100\n"
        f"    params: {{steps: {STEPS}, step_s: 0.1, checkpoint: true, counter_dir: {counts}}}\n"
        f"    grid:\n      value: {list(range(JOBS))}\n"
    )
    env = {"SWEEPER_TEST_SNAPSHOT_DELAY_S": str(SNAPSHOT_DELAY_S)}
    done = run_cli(
        "enqueue", str(grid), "--state", str(state), "--mirror", "on", SWEEPER_MIRROR_DIR=str(tmp_path / "vm0")
    )
    assert done.returncode == 0, done.stderr

    must_resume_from: dict[str, int] = {}  # job -> step of its newest checkpoint when a kill hit it
    kinds = {"startup": 0, "running": 0, "snapshot write": 0}
    for i in range(KILLS):
        log = tmp_path / f"worker{i}.log"
        before = _checkpoint_files(state)
        proc = start_worker(
            "--state",
            str(state),
            "--mirror",
            "on",
            "--no-tracking",
            "--lease-ttl",
            "30",
            log=log,
            SWEEPER_MIRROR_DIR=str(tmp_path / f"vm{i + 1}"),  # a new VM: empty local disk
            **env,
        )
        try:
            mode = ("startup", "running", "snapshot write")[i % 3]
            if mode == "startup":  # while it restores the snapshot and releases orphans
                time.sleep(rng.uniform(0.2, 1.2))
            elif mode == "running":  # once this worker has written a checkpoint (torch takes seconds to import)
                wait_for(lambda p=proc, b=before: p.poll() is not None or _checkpoint_files(state) - b, 90)
                time.sleep(rng.uniform(0.0, 1.5))
            else:  # the claim of a job triggers a snapshot: kill while it is being written
                deadline = time.monotonic() + 10
                while proc.poll() is None and not _snapshot_temp_files(state) and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, SNAPSHOT_DELAY_S / 2))
            if proc.poll() is None:
                proc.send_signal(9)
                proc.wait(timeout=30)
        finally:
            stop_process(proc)
        if mode == "snapshot write" and _snapshot_temp_files(state):
            kinds["snapshot write"] += 1  # the temp file the kill cut short is still there
        elif mode != "snapshot write":
            kinds[mode] += 1
        for job_dir in (state / "checkpoints" / "kill").glob("*"):
            if not (counts / job_dir.name).exists():
                step = _newest_checkpoint_step(job_dir)
                if step:
                    must_resume_from[job_dir.name] = max(step, must_resume_from.get(job_dir.name, 0))

    # A last session on yet another VM runs whatever is left.
    final = tmp_path / "final.log"
    proc = start_worker(
        "--state", str(state), "--mirror", "on", "--no-tracking", log=final, SWEEPER_MIRROR_DIR=str(tmp_path / "vmZ")
    )
    try:
        assert proc.wait(timeout=180) == 0, final.read_text()
    except subprocess.TimeoutExpired:
        pytest.fail("the last worker did not finish:\n" + final.read_text())
    finally:
        stop_process(proc)

    status = run_cli(
        "status", "--json", "--state", str(state), "--mirror", "on", SWEEPER_MIRROR_DIR=str(tmp_path / "v")
    )
    assert status.returncode == 0, status.stderr
    counts_by_state = json.loads(status.stdout)["stages"][0]["counts"]
    assert counts_by_state.get("done") == JOBS and sum(counts_by_state.values()) == JOBS, counts_by_state

    # Exactly once: one counter line per job, none missing.
    lines = {p.name: p.read_text().splitlines() for p in counts.iterdir()}
    assert len(lines) == JOBS and all(len(v) == 1 for v in lines.values()), lines

    # Continued from the newest checkpoint, not from zero.
    assert must_resume_from, "no kill hit a job after its first checkpoint; the test proved nothing"
    for job_id, step in must_resume_from.items():
        shown = run_cli(
            "show", job_id, "--json", "--state", str(state), "--mirror", "on", SWEEPER_MIRROR_DIR=str(tmp_path / "v")
        )
        result = json.loads(shown.stdout)["result"]
        assert result["steps"] == STEPS
        assert result["resumed_from"] is not None and result["resumed_from"] >= step, (job_id, step, result)

    assert kinds["snapshot write"] >= 3, kinds  # kills did land in the middle of snapshot writes
    print(f"kills: {kinds}; jobs resumed from a checkpoint: {len(must_resume_from)}")
