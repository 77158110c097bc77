"""One session at a time per state directory on a network mount: the lease file.

In mirrored mode each machine works on its own local copy of the queue and pushes snapshots to the
shared directory. Two machines doing that at once would overwrite each other's snapshots, so a
session first writes a lease file there naming itself (host, boot, pid, session id) with an
expiry, and renews it while it works. Another session that finds a live lease refuses to start.

Network mounts such as Google Drive are only eventually consistent: a file written on one machine
can take many seconds to appear on another. That is why the lease is generous (minutes, renewed
every few tens of seconds) and why several machines should share a PostgreSQL queue instead.

On this machine, processes are serialized by a filelock on local disk (never on the mount, whose
locks cannot be trusted), and a lease whose process has died is recognised at once (same boot id,
pid gone) instead of waiting for it to expire.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from filelock import FileLock

from .errors import StateLocked

DEFAULT_LEASE_S = 180.0  # Drive can take a minute to show a write elsewhere; stay well above that


def boot_id() -> str:
    """Changes at every boot: a new Colab VM never shares it, even with a recycled host name."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that nobody reaped yet is a zombie: dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Holder:
    """What the lease file says: who works on this state, and until when."""

    session: str
    host: str
    boot_id: str
    pid: int
    command: str
    started_at: float
    expires_at: float
    released: bool = False

    def on_this_machine(self) -> bool:
        mine = boot_id()
        return bool(mine) and self.boot_id == mine and self.host == socket.gethostname()

    def is_live(self, now: float | None = None) -> bool:
        """Unexpired and not released; on this machine also: its process still exists."""
        now = time.time() if now is None else now
        if self.released or self.expires_at <= now:
            return False
        if self.on_this_machine():
            return pid_alive(self.pid)
        return True

    def who(self) -> str:
        return f"session {self.session} (`sweeper {self.command}` on host {self.host}, pid {self.pid})"

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        until = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.expires_at))
        left = max(0.0, self.expires_at - now)
        return f"{self.who()} until {until} (in {_duration(left)})"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class StateLease:
    """The lease file `path` on the shared directory, guarded on this machine by `lock_path`."""

    def __init__(
        self,
        path: Path,
        lock_path: Path,
        *,
        command: str,
        duration_s: float = DEFAULT_LEASE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.duration_s = duration_s
        self.clock = clock
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(lock_path), timeout=60)
        now = clock()
        self.me = Holder(
            session=secrets.token_hex(4),
            host=socket.gethostname(),
            boot_id=boot_id(),
            pid=os.getpid(),
            command=command,
            started_at=now,
            expires_at=now + duration_s,
        )
        self.held = False

    @property
    def renew_every_s(self) -> float:
        return max(0.5, self.duration_s / 6.0)

    def read(self) -> Holder | None:
        """The current holder, None when there is no lease file.

        A file that cannot be parsed (half uploaded by another machine?) counts as held by an
        unknown session until its modification time plus one lease duration.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
            st = self.path.stat()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            return Holder(**{k: data[k] for k in Holder.__dataclass_fields__ if k in data})
        except (ValueError, TypeError, KeyError):
            return Holder("unknown", "unknown", "", 0, "?", st.st_mtime, st.st_mtime + self.duration_s)

    def _write(self, holder: Holder) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{self.me.session}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(holder), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def acquire(self, *, take_over: bool = False) -> Holder | None:
        """Take the lease. Returns the previous holder when it was taken over (None: it was free).

        Raises StateLocked when another live session holds it (unless take_over).
        """
        with self.lock:
            now = self.clock()
            current = self.read()
            if current is not None and current.is_live(now) and current.session != self.me.session and not take_over:
                raise StateLocked(
                    f"the state in {self.path.parent} is in use by {current.describe(now)}",
                    hint=(
                        "one session at a time may work on SQLite state kept on a network mount. "
                        "Wait for it to finish (or for its lease to expire), or pass --take-over if you are "
                        "sure it is gone (its Colab runtime was disconnected). To run several machines at "
                        "once, use a PostgreSQL queue: --db postgresql://user@host:5432/dbname"
                    ),
                )
            self.me = replace(self.me, started_at=now, expires_at=now + self.duration_s, released=False)
            self._write(self.me)
            self.held = True
            if current is None or current.released:
                return None
            return current

    def renew(self) -> None:
        """Push the expiry forward. Raises StateLocked if another session has taken the lease."""
        with self.lock:
            now = self.clock()
            current = self.read()
            if current is not None and current.session != self.me.session:
                self.held = False
                raise StateLocked(
                    f"the lease on {self.path.parent} was taken over by {current.describe(now)}",
                    hint="this session stops without pushing more snapshots, so it cannot overwrite that one's work",
                )
            self.me = replace(self.me, expires_at=now + self.duration_s)
            self._write(self.me)

    def release(self) -> None:
        """Mark the lease free (kept as a file so the next session sees who worked last)."""
        if not self.held:
            return
        with self.lock:
            current = self.read()
            if current is None or current.session == self.me.session:
                with contextlib.suppress(OSError):
                    self._write(replace(self.me, expires_at=self.clock(), released=True))
            self.held = False
