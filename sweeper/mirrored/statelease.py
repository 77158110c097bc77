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

The protocol, as written, checked and refused:

- acquire writes the lease, waits `settle_s` and reads it back: if another session's write landed
  in between (two machines that both saw a free lease), the one not in the file backs off
  (LeaseHeld). This closes the race on a mount that shows writes at once;
- the lease names the newest snapshot of each database (`snapshots`) at every renewal, and the
  final ones when it is released, so the next session restores that snapshot or a newer one, never
  an older one that Drive happened to show first (mirror.py waits for it to sync);
- every push first checks (`check`) that the lease file still names the pushing session, and
  mirror.py refuses to push when a snapshot it did not write appeared after it took the lease.
  Those two catch, on an eventually consistent mount, what the read-back cannot: the session that
  finds itself in a split brain stops without writing over the other one's snapshots.

A command blocked by another live session can wait for its lease to run out (`LeaseWait`): it
prints a countdown and takes over when the lease expires or is released.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from filelock import FileLock

from sweeper.errors import StateLocked
from sweeper.files import atomic_write

DEFAULT_LEASE_S = 180.0  # Drive can take a minute to show a write elsewhere; stay well above that


class LeaseHeld(StateLocked):
    """Another live session holds the lease (the refusal that waiting can outlast)."""

    def __init__(self, message: str, *, hint: str | None = None, holder: Holder | None = None) -> None:
        super().__init__(message, hint=hint)
        self.holder = holder


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
    # The newest snapshot of each mirrored database ("queue", "mlflow") as of the last write of the
    # lease; in a released lease, the final ones. The next session restores these or newer ones.
    snapshots: dict[str, str] = field(default_factory=dict)

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


def _no_hook(point: str) -> None:
    """The default race hook: nothing."""


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
        settle_s: float | None = None,
    ) -> None:
        self.path = path
        self.duration_s = duration_s
        self.clock = clock
        # How long acquire waits before reading its write back: longer than the gap between another
        # session's read and its write, short enough not to slow every command (1 s at the default).
        self.settle_s = min(1.0, duration_s / 180.0) if settle_s is None else settle_s
        # Test hook, as Queue.race_hook: called with "acquire-wrote" between acquire's write and
        # its read-back, so that a test can make another session write the lease exactly there.
        self.race_hook: Callable[[str], None] = _no_hook
        self.predecessor: Holder | None = None  # the lease as found by the last acquire, released or not
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
            holder = Holder(**{k: data[k] for k in Holder.__dataclass_fields__ if k in data})
            if not isinstance(holder.snapshots, dict):
                raise TypeError("snapshots")
            return holder
        except (ValueError, TypeError, KeyError):
            return Holder("unknown", "unknown", "", 0, "?", st.st_mtime, st.st_mtime + self.duration_s)

    def _write(self, holder: Holder) -> None:
        atomic_write(self.path, json.dumps(asdict(holder), indent=1).encode("utf-8"))

    def acquire(self, *, take_over: bool = False) -> Holder | None:
        """Take the lease. Returns the previous holder when it was taken over (None: it was free).

        Raises LeaseHeld when another live session holds it (unless take_over), or when another
        session's write replaced ours before the read-back.
        """
        with self.lock:
            now = self.clock()
            current = self.read()
            if current is not None and current.is_live(now) and current.session != self.me.session and not take_over:
                raise LeaseHeld(
                    f"the state in {self.path.parent} is in use by {current.describe(now)}",
                    hint=(
                        "one session at a time may work on SQLite state kept on a network mount. "
                        "Wait for it to finish or for its lease to run out (`sweeper work --wait` waits by "
                        "itself, as enqueue, retry and cancel do without --no-wait), or pass --take-over if you "
                        "are sure it is gone (its Colab runtime was disconnected). To run several machines at "
                        "once, use a PostgreSQL queue: --db postgresql://user@host:5432/dbname"
                    ),
                    holder=current,
                )
            # Carry the snapshots the last holder named until this session names its own: a session
            # that gives up before restoring them must not let the next one start from older ones.
            inherited = dict(current.snapshots) if current is not None else {}
            self.me = replace(
                self.me, started_at=now, expires_at=now + self.duration_s, released=False, snapshots=inherited
            )
            self._write(self.me)
            self.race_hook("acquire-wrote")
            if self.settle_s > 0:
                time.sleep(self.settle_s)
            back = self.read()
            if back is None or back.session != self.me.session:
                # Another session wrote the lease after we read it free: it wrote last, so it keeps it.
                raise LeaseHeld(
                    f"another session took the lease on {self.path.parent} at the same moment"
                    + (f": {back.describe()}" if back is not None else " (the lease file vanished)"),
                    hint="this session backs off without touching the state; run the command again",
                    holder=back,
                )
            self.held = True
            self.predecessor = current
            if current is None or current.released:
                return None
            return current

    def check(self, session: str | None = None) -> None:
        """Raise StateLocked unless the lease file still names `session` (default: this one).

        Called before every push: a session whose lease was taken must not write a snapshot."""
        session = session or self.me.session
        current = self.read()
        if current is None or current.session != session or current.released:
            if session == self.me.session:
                self.held = False
            who = current.describe() if current is not None else "nobody (the lease file is gone)"
            raise StateLocked(
                f"the lease on {self.path.parent} no longer names session {session}: it names {who}",
                hint="this session stops without pushing more snapshots, so it cannot overwrite another one's work",
            )

    def renew(self, snapshots: dict[str, str] | None = None) -> None:
        """Push the expiry forward (and name the newest snapshots). Raises StateLocked if another
        session has taken the lease."""
        with self.lock:
            now = self.clock()
            current = self.read()
            if current is not None and current.session != self.me.session:
                self.held = False
                raise StateLocked(
                    f"the lease on {self.path.parent} was taken over by {current.describe(now)}",
                    hint="this session stops without pushing more snapshots, so it cannot overwrite that one's work",
                )
            self.me = replace(self.me, expires_at=now + self.duration_s, snapshots=dict(snapshots or self.me.snapshots))
            self._write(self.me)

    def release(self, snapshots: dict[str, str] | None = None) -> None:
        """Mark the lease free, naming the final snapshots (kept as a file so the next session sees
        who worked last and which snapshot to wait for)."""
        if not self.held:
            return
        with self.lock:
            current = self.read()
            if current is None or current.session == self.me.session:
                final = dict(snapshots or self.me.snapshots)
                with contextlib.suppress(OSError):
                    self._write(replace(self.me, expires_at=self.clock(), released=True, snapshots=final))
            self.held = False


class LeaseWait:
    """Waiting for another session's lease to run out: a countdown on stderr.

    On a terminal the line is redrawn every second; in a notebook or a log, one line every
    `every_s` (Colab shows each line; logs stay readable)."""

    def __init__(
        self,
        log: Callable[[str], None],
        *,
        every_s: float = 15.0,
        tty: bool | None = None,
        fail_fast: str = "--no-wait fails at once",
    ) -> None:
        self.log = log
        self.fail_fast = fail_fast
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every_s = 1.0 if self.tty else every_s
        self.next_line = 0.0
        self.waited = False
        self.last_expiry: float | None = None

    def pause(self, holder: Holder | None, *, what: str) -> None:
        """Print the countdown when due, then sleep a little (at most until the lease runs out)."""
        now = time.time()
        left = 1.0 if holder is None else holder.expires_at - now
        if time.monotonic() >= self.next_line:
            self.next_line = time.monotonic() + self.every_s
            self._line(self._text(holder, left, what))
        self.waited = True
        # Re-read at least every 2 s: the holder may release early, or renew (it is alive).
        time.sleep(min(2.0, self.every_s, max(0.05, left + 0.05)))

    def done(self, line: str) -> None:
        if self.waited:
            if self.tty:
                sys.stderr.write("\n")
            self.log(line)

    def _text(self, holder: Holder | None, left: float, what: str) -> str:
        if holder is None:
            return f"waiting for the state lease ({what})"
        # A lease whose expiry moves forward is being renewed: its session is alive, not gone.
        renewed = self.last_expiry is not None and holder.expires_at > self.last_expiry + 0.5
        self.last_expiry = holder.expires_at
        alive = "; it was renewed, so that session is still working" if renewed else ""
        return (
            f"waiting for the state lease of {holder.who()}: it runs out in {_duration(max(0.0, left))}"
            f"{alive}; then this session takes over and {what} ({self.fail_fast}; --take-over "
            "if you know that session is gone)"
        )

    def _line(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K" + text[:200])
            sys.stderr.flush()
        else:
            self.log(text)
