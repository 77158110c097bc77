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
from sweeper.mirrored.statelease import StateLease, boot_id

from .conftest import cli_env, run_cli, stop_process, wait_for


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
    now = [time.time()]
    lease = _lease(tmp_path, clock=lambda: now[0])  # the lease's clock moves, not the test's time
    _foreign_holder(lease.path, expires_in=1.5)
    with pytest.raises(StateLocked, match="colab-vm-7"):
        lease.acquire()
    now[0] += 1.49
    with pytest.raises(StateLocked, match="colab-vm-7"):
        lease.acquire()
    now[0] += 0.02
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
    # Live for ten minutes: however loaded the machine, `work` starts long before it runs out.
    _foreign_holder(state / "queue.lease", expires_in=600.0)

    refused = run_cli("work", "--state", str(state), "--mirror", "on", "--no-tracking", **env)
    assert refused.returncode == 4, refused.stderr
    assert "colab-vm-7" in refused.stderr and "pid 4242" in refused.stderr and "until" in refused.stderr
    assert "PostgreSQL" in refused.stderr and "Traceback" not in refused.stderr

    _foreign_holder(state / "queue.lease", expires_in=-1.0)  # the same session's lease, run out
    ran = run_cli("work", "--state", str(state), "--mirror", "on", "--no-tracking", **env)
    assert ran.returncode == 0, ran.stderr
    assert "queue is empty" in ran.stderr
    lease = json.loads((state / "queue.lease").read_text())
    assert lease["released"] is True and lease["host"] != "colab-vm-7"


def test_acquire_reads_its_write_back_and_backs_off_when_another_session_wrote_last(tmp_path):
    """Two machines that both saw the lease free both write it; the one whose write was replaced
    must not go on (before the read-back, both did: split brain)."""
    other = _lease(tmp_path, settle_s=0.0)
    mine = _lease(tmp_path, settle_s=0.0)
    hit: list[str] = []

    def other_writes_now(point: str) -> None:  # between mine's write and its read-back
        if point == "acquire-wrote":
            hit.append(point)
            other._write(other.me)

    mine.race_hook = other_writes_now
    with pytest.raises(StateLocked, match="at the same moment") as info:
        mine.acquire()
    assert hit == ["acquire-wrote"]
    assert not mine.held and other.me.session in str(info.value)
    assert json.loads(mine.path.read_text())["session"] == other.me.session  # the later write stands


def test_check_refuses_a_session_whose_lease_was_taken_or_released(tmp_path):
    first, second = _lease(tmp_path, settle_s=0.0), _lease(tmp_path, settle_s=0.0)
    first.acquire()
    first.check()
    second.acquire(take_over=True)
    with pytest.raises(StateLocked, match=f"no longer names session {first.me.session}"):
        first.check()
    second.release()
    with pytest.raises(StateLocked):
        second.check()


def test_released_lease_names_the_final_snapshots_and_a_new_holder_inherits_them(tmp_path):
    first = _lease(tmp_path, settle_s=0.0)
    first.acquire()
    first.renew({"queue": "queue.1.a.db"})
    first.release({"queue": "queue.2.b.db", "mlflow": "mlflow.2.c.db"})
    assert json.loads(first.path.read_text())["snapshots"] == {"queue": "queue.2.b.db", "mlflow": "mlflow.2.c.db"}
    second = _lease(tmp_path, settle_s=0.0)
    assert second.acquire() is None
    assert second.predecessor is not None and second.predecessor.snapshots["queue"] == "queue.2.b.db"
    # Until it names its own, the new holder's lease still names them: giving up early loses nothing.
    second.release()
    assert json.loads(second.path.read_text())["snapshots"]["queue"] == "queue.2.b.db"


def test_countdown_prints_one_line_per_interval_off_a_terminal(tmp_path, monkeypatch):
    from sweeper.mirrored import statelease
    from sweeper.mirrored.statelease import Holder, LeaseWait

    class Clock:  # the countdown's clock: its sleeps move it, so no line depends on machine load
        now = 1000.0
        slept: list[float] = []  # noqa: RUF012

        @classmethod
        def time(cls) -> float:
            return cls.now

        monotonic = time

        @classmethod
        def sleep(cls, seconds: float) -> None:
            cls.slept.append(seconds)
            cls.now += seconds

    monkeypatch.setattr(statelease, "time", Clock)
    lines: list[str] = []
    wait = LeaseWait(lines.append, every_s=1.0, tty=False)
    holder = Holder("feedbeef", "colab-vm-7", "b", 42, "work", Clock.now, Clock.now + 4.0)
    polls = 0
    while Clock.now < holder.expires_at:
        wait.pause(holder, what="continues")
        polls += 1
        Clock.now += 0.25  # the caller's own work between polls (reading the lease file)
    wait.done("taken")
    # Polls at 0, 1.25, 2.5 and 3.75 s (each sleeps the 1 s interval): each is due a line.
    assert polls == 4 and len(lines) == 5, lines
    assert "session feedbeef" in lines[0] and "runs out in" in lines[0] and "--no-wait" in lines[0]
    assert lines[-1] == "taken"
    fast = LeaseWait(lines.append, every_s=1.0, tty=False)
    lines.clear()
    for _ in range(10):  # ten polls 0.25 s apart (a lease that is out: each sleeps only 0.05 s)
        fast.pause(Holder("feedbeef", "colab-vm-7", "b", 42, "work", 0.0, Clock.now - 0.1), what="continues")
        Clock.now += 0.2
    assert len(lines) == 3, lines  # at 0, 1.0 and 2.0 s: one per interval, not one per poll


def test_short_commands_wait_for_a_live_lease_of_another_machine_unless_no_wait(tmp_path):
    """`enqueue` (also retry and cancel) waits out the lease of a vanished VM with a countdown,
    then takes over; --no-wait keeps the old exit 4."""
    state = tmp_path / "state"
    grid = tmp_path / "g.yaml"
    grid.write_text("sweep: lease\nstages:\n  s:\n    kind: noop\n    grid:\n      value: [1, 2]\n")
    env = {"SWEEPER_MIRROR_DIR": str(tmp_path / "vm1")}
    assert run_cli("enqueue", str(grid), "--state", str(state), "--mirror", "on", **env).returncode == 0
    _foreign_holder(state / "queue.lease", expires_in=30.0)
    for args in (["enqueue", str(grid)], ["retry", "--failed"], ["cancel", "--stage", "s"]):
        refused = run_cli(*args, "--no-wait", "--state", str(state), "--mirror", "on", **env)
        assert refused.returncode == 4 and "colab-vm-7" in refused.stderr, refused.stderr
        assert "waiting" not in refused.stderr and refused.stderr.count("error:") == 1, refused.stderr

    # The lease runs out only once the command is seen waiting (a loaded machine may take seconds to
    # start it): then the "old VM" lease is made to expire 1 s later.
    _foreign_holder(state / "queue.lease", expires_in=600.0)
    log = tmp_path / "enqueue.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper.cli", "enqueue", str(grid), "--state", str(state), "--mirror", "on"],
            env=cli_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "waiting for the state lease" in log.read_text() or proc.poll() is not None, 120)
        assert proc.poll() is None, log.read_text()
        _foreign_holder(state / "queue.lease", expires_in=1.0)
        expires_at = json.loads((state / "queue.lease").read_text())["expires_at"]
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        stop_process(proc)
    assert time.time() >= expires_at  # it did not take a live lease
    text = log.read_text()
    assert "waiting for the state lease of session feedbeef" in text and "runs out in" in text
    assert "0 new job(s), 2 unchanged" in text and "Traceback" not in text
    lease = json.loads((state / "queue.lease").read_text())
    assert lease["released"] is True and lease["session"] != "feedbeef" and lease["snapshots"]["queue"]
