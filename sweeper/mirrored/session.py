"""A command's session on the state: which access each `sweeper` command needs, whether it waits
for another session's lease, and what happens when its own lease is lost.

The CLI names the command and passes its options (CommandState); open_command_state() turns them
into a mirror.open_state() call. Nothing here matters when the state is not mirrored: open_state
then hands back the settings as given.

Nothing here imports torch, mlflow or the queue.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sweeper.config import Settings
from sweeper.errors import UsageError
from sweeper.mirrored.mirror import Access, StateSession, open_state
from sweeper.store.db import Database

# Commands that only read the queue: in mirrored mode they never take the state lease.
READ_ONLY_COMMANDS = frozenset({"status", "show", "export", "report"})


@dataclass(frozen=True)
class CommandState:
    """What a command asks of the state, from its name and its options."""

    command: str
    mirror: str = "auto"  # --mirror: auto, on or off
    take_over: bool = False  # --take-over
    dry_run: bool = False  # enqueue --dry-run reads only
    wait: bool = False  # work --wait: wait out another session's live lease
    no_wait: bool = False  # the short commands wait unless --no-wait

    @property
    def access(self) -> Access:
        if self.command == "work":
            return "work"
        if self.command in READ_ONLY_COMMANDS or self.dry_run:
            return "read"
        return "write"

    @property
    def waits(self) -> bool:
        """A live lease of another session (the VM before a disconnect) is waited out by `work --wait`
        and by the short commands that write unless --no-wait; a reader never needs the lease."""
        if self.access == "read":
            return False
        return self.wait if self.access == "work" else not self.no_wait

    @property
    def fail_fast(self) -> str:
        """How not to wait, for the countdown line."""
        return "without --wait it fails at once" if self.access == "work" else "--no-wait fails at once"


def stop_this_process() -> None:
    """Another session took the state over: stop as on SIGTERM, so that a worker checkpoints its jobs
    and gives them back (from a thread, a signal to ourselves is the one way to reach the main loop)."""
    os.kill(os.getpid(), signal.SIGTERM)


def open_command_state(
    settings: Settings,
    request: CommandState,
    *,
    log: Callable[[str], None],
    on_lost: Callable[[], None] = stop_this_process,
) -> AbstractContextManager[StateSession]:
    """The session the command works in, for a `with` block (or typer.Context.with_resource)."""
    return open_state(
        settings,
        command=request.command,
        access=request.access,
        mirror=request.mirror or os.environ.get("SWEEPER_MIRROR") or "auto",
        take_over=request.take_over,
        log=log,
        on_lost=on_lost,
        wait=request.waits,
        fail_fast=request.fail_fast,
    )


def check_store(session: StateSession, store: str) -> None:
    """`work --store`: checkpoints in the database do not go with mirrored state."""
    if session.mirrored and store == "db":
        raise UsageError(
            "--store db keeps checkpoints inside the queue database, which in mirrored mode reaches the "
            "state directory only with each snapshot",
            hint="use --store files (the default with SQLite): checkpoint files go to the state directory at once",
        )


def mirror_info(session: StateSession, database: Database) -> dict[str, Any] | None:
    """Where mirrored state came from and the last recovery (None when the state is not mirrored):
    the `mirror` part of `status --json`."""
    if not session.mirrored:
        return None
    from sweeper.mirrored.recovery import last_recovery

    return {"notes": list(session.notes), "last_recovery": last_recovery(database)}


def mirror_lines(info: dict[str, Any] | None) -> list[str]:
    """mirror_info() as the lines `sweeper status` prints under its tables."""
    from sweeper.mirrored.recovery import describe_recovery

    if info is None:
        return []
    lines = list(info["notes"])
    if info["last_recovery"]:
        lines.append(describe_recovery(info["last_recovery"]))
    return lines
