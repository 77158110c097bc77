"""The CLI in-process (typer's CliRunner): exit code and output in milliseconds, no subprocess.

`sweeper.cli.main()` turns a SweeperError into its message and exit code; CliRunner calls the
Typer app underneath it, so `invoke` does the same mapping from the exception the app raised.
"""

from __future__ import annotations

from dataclasses import dataclass

from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.errors import SweeperError


@dataclass
class Outcome:
    code: int
    text: str  # stdout and stderr, then the error as main() prints it

    @property
    def flat(self) -> str:
        """The text with rich's line wrapping undone."""
        return " ".join(self.text.split())


def invoke(*args: str) -> Outcome:
    result = CliRunner().invoke(app, list(args))
    exc = result.exception
    if isinstance(exc, SweeperError):
        return Outcome(exc.exit_code, f"{result.output}error: {exc}")
    if exc is not None and not isinstance(exc, SystemExit):
        raise exc
    return Outcome(result.exit_code, result.output)
