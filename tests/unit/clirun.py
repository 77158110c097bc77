"""`sweeper ARGS` in this process, through typer's CliRunner: milliseconds instead of a subprocess.

It runs `sweeper.cli.main()`, the console script's entry point, inside `CliRunner.isolation()`, so
the exit codes and the one-line error of a `SweeperError` are the ones a user sees (main() maps
them; `CliRunner.invoke(app)` alone would show a SweeperError as a Python exception). The rich
consoles of sweeper.cli print to sys.stdout/sys.stderr as they are when printing, so the runner
captures them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from rich.console import Console
from typer.testing import CliRunner

from sweeper import cli

# Wide enough that rich wraps no error line; the variables a user's shell may set are cleared.
ENV = {"COLUMNS": "200", "SWEEPER_DB": None, "SWEEPER_STATE": None, "MLFLOW_TRACKING_URI": None, "SWEEPER_MIRROR": None}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr

    @property
    def flat(self) -> str:
        """The output with every run of whitespace made one space (rich may wrap long lines)."""
        return " ".join(self.text.split())


def sweeper(*args: str, **env: str) -> Run:
    """Run `sweeper ARGS` as the console script would, with `env` over the cleared variables."""
    runner = CliRunner()
    argv = sys.argv
    env = {**ENV, **env}
    # Rich fixes a console's width when it is made if $COLUMNS is set then (it is in pytest-xdist's
    # workers), so set the width of sweeper.cli's consoles for this run too.
    consoles = [c for c in vars(cli).values() if isinstance(c, Console)]
    widths = [c._width for c in consoles]
    for console in consoles:
        console.width = int(env["COLUMNS"] or 200)
    with runner.isolation(env=env) as (stdout, stderr, _):
        sys.argv = ["sweeper", *args]
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = argv
            sys.stdout.flush()
            sys.stderr.flush()
            for console, width in zip(consoles, widths, strict=True):
                console._width = width
        out, err = stdout.getvalue(), stderr.getvalue()
    return Run(code, out.decode(), err.decode())


def check(run: Run, code: int, *needles: str) -> None:
    """The exit code is `code`, no traceback was printed, and every needle is in the output."""
    assert run.code == code, run.text
    assert "Traceback" not in run.text, run.text
    for needle in needles:
        assert needle in run.flat, run.text
