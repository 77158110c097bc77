"""The CLI's wiring, in-process (typer's CliRunner): the shared options reach every command, after
its own in --help; each command asks the state for the access it needs; retry and cancel share
one implementation and say what they left alone."""

from __future__ import annotations

import re
import textwrap

import pytest
from typer.testing import CliRunner

from sweeper.cli import READS, WRITES, app
from sweeper.errors import SweeperError
from sweeper.mirrored.session import CommandState

runner = CliRunner()
SHARED_FLAGS = {
    "state": "--state",
    "db": "--db",
    "mirror": "--mirror",
    "take_over": "--take-over",
    "no_wait": "--no-wait",
}
COMMANDS = {
    "enqueue": WRITES,
    "work": (*READS, "take_over"),
    "status": READS,
    "show": READS,
    "export": READS,
    "report": READS,
    "retry": WRITES,
    "cancel": WRITES,
}


def user_error(result) -> str:
    """The message of the SweeperError a command raised (main() prints it and exits with its code)."""
    assert isinstance(result.exception, SweeperError), result.output
    assert result.exception.exit_code == 2
    return result.exception.message


def options_in_help(command: str) -> list[str]:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return re.findall(r"^[│|]\s+(--[a-z-]+)", result.output, flags=re.MULTILINE)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_lists_its_shared_options_last(command):
    flags = [f for f in options_in_help(command) if f != "--help"]
    shared = [SHARED_FLAGS[name] for name in COMMANDS[command]]
    assert flags[-len(shared) :] == shared
    assert not set(SHARED_FLAGS.values()) - set(shared) & set(flags)  # and no other shared one


def test_the_state_option_reaches_the_command(tmp_path):
    state = tmp_path / "elsewhere"
    for command in (["status"], ["show", "abcd"], ["export", "--csv", "-"], ["retry", "--failed"], ["cancel", "x1234"]):
        result = runner.invoke(app, [*command, "--state", str(state), "--mirror", "off"], env={"SWEEPER_DB": ""})
        assert f"no queue database at {state.resolve() / 'queue.db'}" in user_error(result), command


def test_retry_and_cancel_need_a_selection_and_say_what_they_left(tmp_path):
    db = f"sqlite:///{tmp_path / 'q.db'}"
    grid = tmp_path / "grid.yaml"
    grid.write_text(textwrap.dedent("sweep: s\nstages:\n  a: {kind: noop, grid: {value: [1, 2]}}\n"))
    assert runner.invoke(app, ["enqueue", str(grid), "--db", db]).exit_code == 0
    for verb in ("retry", "cancel"):
        result = runner.invoke(app, [verb, "--db", db])
        assert f"say which jobs to {verb}" in user_error(result)
    result = runner.invoke(app, ["retry", "--stage", "a", "--db", db])
    assert result.exit_code == 0, result.output
    assert "retrying 0 job(s)" in result.output
    assert "no failed or cancelled job in stage 'a' (2 pending): nothing to do" in result.output
    result = runner.invoke(app, ["cancel", "--stage", "a", "--db", db])
    assert result.exit_code == 0 and "cancelled 2 job(s)" in result.output
    result = runner.invoke(app, ["retry", "--stage", "b", "--db", db])
    assert "no stage named 'b'" in user_error(result)
    result = runner.invoke(app, ["retry", "--stage", "a", "--db", db])
    assert result.exit_code == 0 and "retrying 2 job(s)" in result.output


@pytest.mark.parametrize(
    ("state", "access", "waits"),
    [
        (CommandState("status"), "read", False),
        (CommandState("enqueue", dry_run=True), "read", False),
        (CommandState("enqueue"), "write", True),
        (CommandState("retry", no_wait=True), "write", False),
        (CommandState("work"), "work", False),
        (CommandState("work", wait=True), "work", True),
    ],
)
def test_each_command_asks_the_state_for_what_it_needs(state, access, waits):
    assert (state.access, state.waits) == (access, waits)
