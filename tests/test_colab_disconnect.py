"""The Colab promise, for real: a session dies mid-job on one VM, and the notebook's own commands,
run unchanged on a new VM, carry on once the old VM's state lease runs out.

The old VM is a real process tree on another hostname (`unshare -u`: another UTS namespace, so its
lease is not recognised as this machine's and must be waited out, exactly as on a new Colab VM),
killed with SIGKILL. Its local copy of the queue is removed, as a new VM's disk is empty. "Drive" is
a temp directory that a mount table describes as Google Drive (so mirrored mode switches on by
itself); the notebook reads it through SWEEPER_STATE, which its own cell sets on Colab.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, cli_env, stop_process, wait_for
from .test_mirror_kill import _newest_checkpoint_step

NOTEBOOK = REPO / "docs" / "colab.ipynb"
LEASE_S = 30.0  # the state lease (180 s by default): long enough to outlast the new VM's start, short for a test
STEPS = 80


def notebook_commands() -> list[str]:
    """The notebook's sweeper commands, in order, as its `!` lines hand them to the shell."""
    nb = json.loads(NOTEBOOK.read_text())
    return [
        line[1:]
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if line.startswith("!sweeper")
    ]


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-u", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _vm_env(tmp_path: Path, state: Path) -> dict[str, str]:
    """What a Colab VM's shell sees: `sweeper` on PATH, the state on "Drive", a local disk."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "sweeper"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sweeper.cli "$@"\n')
    shim.chmod(0o755)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\ndrive {tmp_path / 'drive'} fuse.drive rw,nosuid,nodev 0 0\n")
    return cli_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        SWEEPER_STATE=str(state),  # set by the notebook's "The sweep" cell
        STATE=str(state),  # the notebook's Python variables, which IPython expands in `!` lines
        GRID=str(state / "grid.yaml"),
        SWEEPER_MOUNTS_FILE=str(mounts),
        SWEEPER_MIRROR_DIR=str(tmp_path / "vm-disk"),
        SWEEPER_STATE_LEASE_S=str(LEASE_S),
    )


@pytest.mark.skipif(not _can_unshare(), reason="unshare -u needs root (or user namespaces) here")
def test_notebook_carries_on_after_a_vm_dies_mid_job(tmp_path):
    commands = notebook_commands()
    assert commands and commands[0].startswith('sweeper work --wait "$GRID"'), commands
    state = tmp_path / "drive" / "MyDrive" / "sweeps" / "quickstart"
    state.mkdir(parents=True)
    counts = tmp_path / "counts"
    counts.mkdir()
    (state / "grid.yaml").write_text(  # as if the notebook had copied it there in an earlier session
        "sweep: colab\nstages:\n  s:\n    kind: noop\n"
        f"    params: {{steps: {STEPS}, step_s: 0.1, checkpoint: true, counter_dir: {counts}}}\n"
        "    grid:\n      value: [1, 2]\n"
    )
    env = _vm_env(tmp_path, state)

    # The old VM: the notebook's work cell on host colab-vm-a, killed (the whole tree) mid-job.
    log_a = tmp_path / "vm-a.log"
    with open(log_a, "wb") as out:
        vm_a = subprocess.Popen(
            ["unshare", "-u", "bash", "-c", f"hostname colab-vm-a && {commands[0]}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Cheap to poll (no torch import): kill as soon as the first checkpoint file is there.
    checkpointed = lambda: list(state.glob("checkpoints/colab/*/*.ckpt"))  # noqa: E731
    try:
        wait_for(lambda: vm_a.poll() is not None or checkpointed(), 180, what="a checkpoint of the old VM")
        assert vm_a.poll() is None, log_a.read_text()
        time.sleep(1.0)  # a few more steps, so that resuming from the checkpoint shows
        lease = json.loads((state / "queue.lease").read_text())
        assert lease["host"] == "colab-vm-a" and not lease["released"]
        os.killpg(vm_a.pid, signal.SIGKILL)
        vm_a.wait(timeout=30)
    finally:
        if vm_a.poll() is None:
            os.killpg(vm_a.pid, signal.SIGKILL)
        stop_process(vm_a)
    at_kill = {d.name: _newest_checkpoint_step(d) for d in state.glob("checkpoints/colab/*")}
    assert any(0 < step < STEPS for step in at_kill.values()), at_kill  # killed mid-job, after a checkpoint
    lease = json.loads((state / "queue.lease").read_text())
    assert lease["host"] == "colab-vm-a" and not lease["released"]  # it never said goodbye
    shutil.rmtree(tmp_path / "vm-disk")  # a new VM: nothing on its local disk

    # The new VM (this host): every sweeper command of the notebook, unchanged, in order.
    outputs = []
    for command in commands:
        started = time.time()
        done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=600)
        text = done.stdout + done.stderr
        assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{text}"
        assert "Traceback" not in text, text
        outputs.append((command, started, text))
        print(f"{command}: {time.time() - started:.1f}s")

    work_started, work_log = outputs[0][1], outputs[0][2]
    if work_started < lease["expires_at"] - 1:  # the old lease was still live: it waited, with a countdown
        assert "waiting for the state lease of session" in work_log and "colab-vm-a" in work_log, work_log
        assert "runs out in" in work_log
    assert "recovery:" in work_log and "went back to the queue" in work_log, work_log
    new_lease = json.loads((state / "queue.lease").read_text())
    assert new_lease["released"] and new_lease["host"] != "colab-vm-a" and new_lease["snapshots"]["queue"]

    # Every job ran to the end exactly once; the interrupted ones resumed from their checkpoint.
    lines = {p.name: p.read_text().split() for p in counts.iterdir()}
    assert len(lines) == 2 and all(len(v) == 1 for v in lines.values()), lines
    for job_id, step in at_kill.items():
        if step >= STEPS:
            continue
        shown = subprocess.run(
            ["bash", "-c", f"sweeper show {job_id} --json"], env=env, capture_output=True, text=True, timeout=120
        )
        assert shown.returncode == 0, shown.stderr
        result = json.loads(shown.stdout)["result"]
        assert result["steps"] == STEPS and result["resumed_from"] >= step, (job_id, step, result)
    waited = "waiting for the state lease" in work_log
    print(f"checkpoints at the kill: {at_kill}; waited for the lease: {waited}; commands: {[c for c, _, _ in outputs]}")
