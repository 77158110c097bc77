"""The options the commands of sweeper/cli.py share, declared once.

A command's own options are typed parameters of its function. The options every command shares
(--state, --db, --mirror; --take-over and --no-wait on those that write) are declared here, in
SHARED: `@shared_options(...)` lists them after the command's own and hands them to it as one
SharedOptions, whose open() starts the command's session on the state (sweeper/mirrored/session.py
decides what that means on a network mount). Options several commands take (--sweep, --mlflow-uri,
job ids) are typed aliases here too.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from sweeper.config import mask_password, resolve_settings

if TYPE_CHECKING:
    from sweeper.mirrored.mirror import StateSession

err = Console(stderr=True, highlight=False)  # the session's own lines (lease waits, snapshots)

StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state",
        envvar="SWEEPER_STATE",
        show_default=False,
        help="State directory: queue.db, mlflow.db, checkpoints, artifacts. [default: ./state]",
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="SWEEPER_DB",
        show_default=False,
        help="Queue database URL. [default: sqlite:///<state>/queue.db; postgresql://... for several machines]",
    ),
]
SweepOpt = Annotated[str | None, typer.Option("--sweep", help="Only this sweep.")]
JobIdsArg = Annotated[list[str] | None, typer.Argument(help="Job ids (or unique prefixes).", show_default=False)]
MlflowUriOpt = Annotated[
    str | None,
    typer.Option(
        "--mlflow-uri",
        envvar="MLFLOW_TRACKING_URI",
        show_default=False,
        help="MLflow tracking URI. [default: sqlite:///<state>/mlflow.db; with a PostgreSQL queue, database <queuedb>_mlflow on its server]",
    ),
]
MirrorOpt = Annotated[
    str,
    typer.Option(
        "--mirror",
        envvar="SWEEPER_MIRROR",
        help="Keep the live SQLite files on local disk and push snapshots to the state directory: auto "
        "(when it is on a network mount such as Google Drive), on, or off. Local copies live under "
        "$SWEEPER_MIRROR_DIR (default: the temp dir).",
    ),
]
TakeOverOpt = Annotated[
    bool,
    typer.Option(
        "--take-over",
        help="Mirrored mode: take the state over although another session's lease is live "
        "(only when you know that session is gone, e.g. its Colab runtime was disconnected).",
    ),
]

NoWaitOpt = Annotated[
    bool,
    typer.Option(
        "--no-wait",
        help="Mirrored mode: when another session's state lease is live, fail at once (exit 4) instead of "
        "waiting for it to run out.",
    ),
]


# The options every command shares, in --help order: name -> (type, default). See shared_options.
SHARED: dict[str, tuple[Any, Any]] = {
    "state": (StateOpt, None),
    "db": (DbOpt, None),
    "mirror": (MirrorOpt, "auto"),
    "take_over": (TakeOverOpt, False),
    "no_wait": (NoWaitOpt, False),
}
READS = ("state", "db", "mirror")  # commands that read the queue
WRITES = (*READS, "take_over", "no_wait")  # commands that change it (work takes --wait instead of --no-wait)


@dataclass
class SharedOptions:
    """The shared options as given, with the command they came with."""

    ctx: typer.Context
    state: Path | None = None
    db: str | None = None
    mirror: str = "auto"
    take_over: bool = False
    no_wait: bool = False

    def open(
        self, *, mlflow_uri: str | None = None, tracking: bool = False, dry_run: bool = False, wait: bool = False
    ) -> StateSession:
        """Resolve the settings and start the command's session on the state (mirrored mode on a
        network mount); Typer closes it when the command returns."""
        from sweeper.mirrored.session import CommandState, open_command_state

        settings = resolve_settings(state=self.state, db=self.db, tracking_uri=mlflow_uri, tracking=tracking)
        command = CommandState(
            self.ctx.info_name or "?", self.mirror, self.take_over, dry_run=dry_run, wait=wait, no_wait=self.no_wait
        )
        log = lambda line: err.print(mask_password(line), markup=False, highlight=False)  # noqa: E731
        return self.ctx.with_resource(open_command_state(settings, command, log=log))


Command = TypeVar("Command", bound=Callable[..., None])


def shared_options(*names: str) -> Callable[[Command], Command]:
    """Give a command the SHARED options `names`, after its own, and call it with them gathered in
    its keyword `shared: SharedOptions`. Typer reads the signature made here: ctx, the command's own
    parameters, then the shared options."""

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "shared"]
        ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        extra = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=SHARED[n][0], default=SHARED[n][1])
            for n in names
        ]

        @functools.wraps(command)
        def with_shared(ctx: typer.Context, **kwargs: Any) -> None:
            given = {n: kwargs.pop(n) for n in names}
            command(**kwargs, shared=SharedOptions(ctx, **given))

        params = [ctx, *own, *extra]
        with_shared.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        with_shared.__annotations__ = {p.name: p.annotation for p in params}
        return with_shared  # type: ignore[return-value]

    return decorate
