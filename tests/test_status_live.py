"""`sweeper status --watch` in a real terminal (a pty) while a real worker runs slow noop jobs."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

from tests.conftest import cli_env, run_cli, start_worker, stop_process, wait_for

GRID = """\
sweep: live
stages:
  slow:
    kind: noop
    params: {steps: 40, step_s: 0.2}
    grid:
      value: [1.0, 2.0]
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _controlling_tty() -> None:
    # A session of its own with the pty as its terminal, so that ^C on it means SIGINT, as in a shell.
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A child process on a pseudo-terminal of 80x40 cells; we keep everything it draws."""

    def __init__(self, args: list[str], cwd, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
        env = {**env, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "40"}
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_controlling_tty
        )
        os.close(slave)
        self.master = master
        self.raw = b""

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    return
                if not chunk:
                    return
                self.raw += chunk

    def wait_for(self, pattern: str, what: str, timeout: float = 90) -> re.Match:
        def seen() -> re.Match | None:
            self.read(0.3)
            return re.search(pattern, self.text)

        return wait_for(seen, timeout=timeout, what=what)

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def close(self) -> None:
        stop_process(self.proc)
        os.close(self.master)


def test_watch_shows_progress_and_updates_while_a_worker_runs(tmp_path):
    (tmp_path / "g.yaml").write_text(GRID)
    db = f"sqlite:///{tmp_path / 'state' / 'queue.db'}"
    assert run_cli("enqueue", "g.yaml", "--db", db, cwd=tmp_path).returncode == 0
    # A short lease makes the heartbeat (which publishes progress) beat every half second.
    worker = start_worker(
        "--db", db, "--no-tracking", "--lease-ttl", "1.5", "--state", str(tmp_path / "state"), cwd=tmp_path
    )
    term = Terminal(
        [sys.executable, "-m", "sweeper.cli", "status", "--watch", "--interval", "0.3", "--db", db],
        tmp_path,
        cli_env(),
    )
    try:
        # Wait until the dashboard shows the first job running, then until it shows a job done.
        term.wait_for(r"running \(1\)", "a running job on screen")
        seen_running = term.text
        term.wait_for(r"[12]/2 done", "a finished job on screen")
        term.read(1.0)
        text = term.text
        assert "sweep live" in text and "refreshing every 0.3s" in text
        assert "0/2 done" in seen_running
        # The progress column moves: several distinct percentages were drawn as the job stepped.
        percents = {int(p) for p in re.findall(r"[█░]{8}\s+(\d+)%", text)}
        assert len(percents) >= 3, percents
        assert re.search(r"step \d+/40", text)  # the job's own progress message (no epoch in noop)

        # Ctrl-C ends the watch cleanly, without a traceback.
        os.write(term.master, b"\x03")
        assert term.proc.wait(timeout=120) == 0  # a bound, not a speed: the watch exits at once, a loaded machine is slow
        term.read(0.5)
        assert "Traceback" not in term.text
    finally:
        term.close()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        stop_process(worker, timeout=30) if worker.poll() is None else None
