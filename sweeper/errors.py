"""Typed errors. Each carries the message a user should read; the CLI maps them to exit codes."""

from __future__ import annotations

import re

from sweeper.config import mask_password
from sweeper.views.safe_text import visible

# "ValueError: ...", "sqlalchemy.exc.OperationalError: ...", "RuntimeError: MLflow: ...", and the
# names of our own errors that end otherwise ("sweeper.errors.RefusedCheckpoint: ...").
_EXCEPTION_LINE = re.compile(
    r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failed|Lost|Warning|Checkpoint|Path|Unavailable|Mismatch|"
    r"Locked|NotFound)\b.*"
)
_NOISE = ("(Background on this error", "^", "~")


def error_summary(text: str | None, limit: int = 300) -> str:
    """The one line of an error worth showing: the exception line of a traceback, else the first.

    For a traceback that is the last line naming an exception, skipping decoration such as
    SQLAlchemy's "(Background on this error at: ...)" and the "^^^^" markers under code. Passwords
    in it are masked: status, the CSV, the report and worker logs all show errors through here.
    """
    if not text:
        return ""
    text = mask_password(text)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    if not lines[0].startswith("Traceback"):
        return lines[0][:limit]
    meaningful = [ln for ln in lines if not ln.startswith(_NOISE)]
    for ln in reversed(meaningful):
        if _EXCEPTION_LINE.match(ln):
            return ln[:limit]
    return (meaningful or lines)[-1][:limit]


class SweeperError(Exception):
    """Base class for every error meant for the user (no traceback is printed)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        # Messages quote input (a stage name, a file, a value from the queue): shown as text, with
        # control characters made visible, wherever they are printed (views/safe_text.py).
        message = visible(message, lines=True)
        hint = visible(hint, lines=True) if hint is not None else None
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(SweeperError):
    """Bad input from the user: a grid file, an option, a job id. Exit code 2."""

    exit_code = 2


class SpecError(UsageError):
    """A grid file that cannot become jobs. Names the file, line, stage and key where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        stage: str | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = []
        if file:
            where.append(f"{file}:{line}" if line else file)
        if stage:
            where.append(f"stage '{stage}'")
        if key:
            where.append(f"key '{key}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message, hint=hint)
        self.file, self.line, self.stage, self.key = file, line, stage, key


class JobNotFound(UsageError):
    pass


class SchemaMismatch(SweeperError):
    """The database was written by a newer sweeper, or is not a sweeper database."""

    exit_code = 3


class DatabaseUnavailable(SweeperError):
    """The database could not be reached within the retry budget."""

    exit_code = 3


class LeaseLost(SweeperError):
    """This worker no longer owns the job: another worker took it over (fencing refused a write)."""


class StateLocked(SweeperError):
    """Another live session holds the state directory's lease (mirrored mode)."""

    exit_code = 4


class CheckpointError(SweeperError):
    """A checkpoint or artifact could not be written, read or verified."""


class UnsafePath(CheckpointError):
    """A name or stored location from the queue that would lead outside the state directory."""


class RefusedCheckpoint(CheckpointError):
    """A checkpoint or artifact that is not a torch.save file of plain tensors and values: possibly
    malicious. Its one-line message names the file and the reason (and, once it is kept aside,
    its sha256 and where it went); a retry cannot change the outcome, so the job fails at once."""

    def __init__(
        self,
        what: str,
        reason: str,
        *,
        sha256: str | None = None,
        quarantine: str | None = None,
        job_id: str | None = None,
        more: int = 0,
    ) -> None:
        # The first line is the summary (status, the CSV, the worker log): the file, the reason and
        # where it went. File names of the store carry the sha256; the next line states it whole.
        message = f"{what} refused as possibly malicious: {reason}"
        if quarantine:
            message += f"; kept in {quarantine.rsplit('/', 1)[0]}/"
        if more:
            message += f" (and {more} older one(s))"
        if sha256 or quarantine:
            message += "\n " + (f" sha256 {sha256}" if sha256 else "") + (f"  at {quarantine}" if quarantine else "")
        hint = (
            "checkpoints load only as torch.save files of tensors and plain values; inspect the file before trusting it"
        )
        if job_id:
            hint += f"; `sweeper retry --from-scratch {job_id}` starts the job again without it"
        super().__init__(message, hint=hint)
        self.what, self.reason, self.sha256, self.quarantine = what, reason, sha256, quarantine
