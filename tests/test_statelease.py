"""One session at a time per state directory: the lease file and its local filelock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeper.errors import StateLocked
from sweeper.statelease import StateLease, boot_id

from .conftest import run_cli


def _lease(tmp_path: Path, command: str = "work", **kw) -> StateLease:
    return StateLease(tmp_path / "state" / "queue.lease", tmp_path / "local" / "lease.lock", command=command, **kw)


def _foreign_holder(path: Path, *, expires_in: float, host: str = "colab-vm-7", pid: int = 4242) -> None:
    """A lease written by a session on another machine (another host, another boot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path.write_text(
        json.dumps(
            {
                "session": "feedbeef",
                "host": host,
                "boot_id": "another-boot",
                "pid": pid,
                "command": "work",
                "started_at": now - 60,
                "expires_at": now + expires_in,
                "released": False,
            }
        )
    )


def test_second_session_while_lease_is_live_is_refused_with_holder_details(tmp_path):
    first, second = _lease(tmp_path), _lease(tmp_path)
    assert first.acquire() is None
    with pytest.raises(StateLocked) as info:
        second.acquire()
    text = str(info.value)
    assert first.me.session in text and first.me.host in text and f"pid {os.getpid()}" in text
    assert "until" in text and "PostgreSQL" in text and "--take-over" in text
    assert json.loads(first.path.read_text())["session"] == first.me.session  # untouched


def test_expired_lease_is_taken_over(tmp_path):
    lease = _lease(tmp_path)
    _foreign_holder(lease.path, expires_in=-1.0)
    previous = lease.acquire()
    assert previous is not None and previous.host == "colab-vm-7"
    assert json.loads(lease.path.read_text())["session"] == lease.me.session


def test_live_lease_of_another_machine_is_refused_until_it_expires(tmp_path):
    lease = _lease(tmp_path)
    _foreign_holder(lease.path, expires_in=1.5)
    with pytest.raises(StateLocked, match="colab-vm-7"):
        lease.acquire()
    time.sleep(1.6)
    assert lease.acquire().session == "feedbeef"


def test_take_over_flag_overrides_a_live_lease(tmp_path):
    lease = _lease(tmp_path)
    _foreign_holder(lease.path, expires_in=600)
    assert lease.acquire(take_over=True).host == "colab-vm-7"


@pytest.mark.skipif(not boot_id(), reason="no /proc/sys/kernel/random/boot_id on this system")
def test_lease_of_a_dead_process_on_this_machine_is_taken_over_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease = _lease(tmp_path)
    _foreign_holder(lease.path, expires_in=600, host=socket.gethostname(), pid=dead.pid)
    data = json.loads(lease.path.read_text())
    lease.path.write_text(json.dumps({**data, "boot_id": boot_id()}))
    previous = lease.acquire()  # no wait for the expiry: that process is gone
    assert previous is not None and previous.pid == dead.pid
    # The same lease with a live pid (this test's own) is respected.
    lease.path.write_text(json.dumps({**data, "boot_id": boot_id(), "pid": os.getpid()}))
    with pytest.raises(StateLocked):
        _lease(tmp_path).acquire()


def test_renewal_notices_a_takeover_and_released_lease_is_free(tmp_path):
    first, second = _lease(tmp_path), _lease(tmp_path)
    first.acquire()
    first.renew()
    second.acquire(take_over=True)
    with pytest.raises(StateLocked, match="taken over"):
        first.renew()
    second.release()
    assert json.loads(second.path.read_text())["released"] is True
    assert _lease(tmp_path).acquire() is None  # a released lease counts as free


def test_half_written_lease_file_counts_as_held_for_one_lease_period(tmp_path):
    lease = _lease(tmp_path, duration_s=60)
    lease.path.parent.mkdir(parents=True)
    lease.path.write_text('{"session": "ab')
    with pytest.raises(StateLocked, match="unknown"):
        lease.acquire()
    old = time.time() - 120
    os.utime(lease.path, (old, old))
    assert lease.acquire() is not None


def test_cli_refuses_second_session_and_takes_over_after_expiry(tmp_path):
    """The whole path through `sweeper work --mirror on`: refused with exit code 4, then allowed."""
    state = tmp_path / "state"
    grid = tmp_path / "g.yaml"
    grid.write_text("sweep: lease\nstages:\n  s:\n    kind: noop\n    grid:\n      value: [1, 2]\n")
    env = {"SWEEPER_MIRROR_DIR": str(tmp_path / "vm1")}
    done = run_cli("enqueue", str(grid), "--state", str(state), "--mirror", "on", **env)
    assert done.returncode == 0, done.stderr
    _foreign_holder(state / "queue.lease", expires_in=15.0)  # outlasts the start of `work` on a loaded machine
    expires_at = json.loads((state / "queue.lease").read_text())["expires_at"]

    refused = run_cli("work", "--state", str(state), "--mirror", "on", "--no-tracking", **env)
    assert time.time() < expires_at, "the machine was too slow for this test to mean anything"
    assert refused.returncode == 4, refused.stderr
    assert "colab-vm-7" in refused.stderr and "pid 4242" in refused.stderr and "until" in refused.stderr
    assert "PostgreSQL" in refused.stderr and "Traceback" not in refused.stderr

    time.sleep(max(0.0, expires_at - time.time()) + 0.1)
    ran = run_cli("work", "--state", str(state), "--mirror", "on", "--no-tracking", **env)
    assert ran.returncode == 0, ran.stderr
    assert "queue is empty" in ran.stderr
    lease = json.loads((state / "queue.lease").read_text())
    assert lease["released"] is True and lease["host"] != "colab-vm-7"
