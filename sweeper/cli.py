"""The `sweeper` command: parses options, calls the library, prints. Nothing else lives here.

Errors meant for the user are SweeperError subclasses; `main()` prints them without a traceback
and exits with their code (2 for bad input, 3 for an unreachable or incompatible database).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sweeper.config import Settings, mask_password, resolve_settings
from sweeper.errors import SweeperError, UsageError

app = typer.Typer(
    help="Resumable hyperparameter sweeps: enqueue a grid, run workers anywhere, watch and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

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


def _version(value: bool) -> None:
    if value:
        from sweeper import __version__

        out.print(f"sweeper {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Resumable hyperparameter sweeps: enqueue a grid, run workers anywhere, watch and report."""


# Commands that only read the queue: in mirrored mode they never take the state lease.
READ_ONLY_COMMANDS = frozenset({"status", "show", "export", "report"})


def _settings(
    ctx: typer.Context, state: Path | None, db: str | None, mlflow_uri: str | None = None, tracking: bool = True
) -> Settings:
    settings = resolve_settings(state=state, db=db, tracking_uri=mlflow_uri, tracking=tracking)
    return _state_session(ctx, settings).settings


def _state_session(ctx: typer.Context, settings: Settings) -> Any:
    """Mirrored mode (mirror.py) for the running command; a plain session when it is not needed.

    On a network mount every command works on local copies of the SQLite files; the session (the
    state lease, the snapshots) stays open until the command returns, when its context closes it
    (`ctx: typer.Context`, which Typer passes to each command). The command's --mirror,
    --take-over and wait options are read from the context's parameters.
    """
    from sweeper.mirrored.mirror import open_state

    if "sweeper.session" in ctx.meta:
        return ctx.meta["sweeper.session"]
    command = ctx.info_name or "?"
    if command == "work":
        access = "work"
    elif command in READ_ONLY_COMMANDS or ctx.params.get("dry_run"):
        access = "read"
    else:
        access = "write"

    def lost() -> None:  # another session took the state over: stop like on SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)

    # A live lease of another session (the VM before a disconnect) is waited out: `work --wait`
    # and the short commands unless --no-wait.
    wait = bool(ctx.params.get("wait")) if access == "work" else not ctx.params.get("no_wait")

    session = ctx.with_resource(
        open_state(
            settings,
            command=command,
            access=access,
            mirror=ctx.params.get("mirror") or os.environ.get("SWEEPER_MIRROR") or "auto",
            take_over=bool(ctx.params.get("take_over")),
            log=lambda line: err.print(mask_password(line), markup=False, highlight=False),
            on_lost=lost,
            wait=wait and access != "read",
            fail_fast="without --wait it fails at once" if access == "work" else "--no-wait fails at once",
        )
    )
    ctx.meta["sweeper.session"] = session
    return session


def _mirror_info(ctx: typer.Context, settings: Settings) -> dict[str, Any] | None:
    """Where mirrored state came from and the last recovery (None when the state is not mirrored)."""
    session = _state_session(ctx, settings)
    if not session.mirrored:
        return None
    from sweeper.mirrored.recovery import last_recovery

    database = _open(settings, create=False)
    try:
        recovery = last_recovery(database)
    finally:
        database.dispose()
    return {"notes": list(session.notes), "last_recovery": recovery}


def _mirror_lines(ctx: typer.Context, settings: Settings) -> list[str]:
    from sweeper.mirrored.recovery import describe_recovery

    info = _mirror_info(ctx, settings)
    if info is None:
        return []
    lines = list(info["notes"])
    if info["last_recovery"]:
        lines.append(describe_recovery(info["last_recovery"]))
    return lines


def _with_mirror(ctx: typer.Context, payload: dict[str, Any], settings: Settings) -> dict[str, Any]:
    info = _mirror_info(ctx, settings)
    return payload if info is None else {**payload, "mirror": info}


def _open(settings: Settings, *, create: bool):
    from sweeper.store.db import OutagePolicy, open_database

    # Interactive commands give up on an unreachable database quickly; workers wait longer.
    return open_database(settings.db_url, create=create, outage=OutagePolicy(limit_s=10.0))


@app.command()
def enqueue(
    ctx: typer.Context,
    grid: Annotated[Path, typer.Argument(help="The grid file (YAML) describing the sweep.", show_default=False)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the jobs without writing anything.")] = False,
    state: StateOpt = None,
    db: DbOpt = None,
    mirror: MirrorOpt = "auto",
    take_over: TakeOverOpt = False,
    no_wait: NoWaitOpt = False,
) -> None:
    """Turn every configuration of GRID into a job. Safe to run again: only new jobs are added."""
    from sweeper.grid.spec import load_spec
    from sweeper.store.queue import EnqueueDiff, Queue

    spec = load_spec(grid)
    settings = _settings(ctx, state, db, tracking=False)
    if dry_run:
        diff = _dry_run_diff(settings, spec)
        _print_diff(diff, settings, listing=True)
        return
    database = _open(settings, create=True)
    try:
        diff: EnqueueDiff = Queue(database).enqueue(spec)
    finally:
        database.dispose()
    _print_diff(diff, settings, listing=False)


def _dry_run_diff(settings: Settings, spec: Any) -> Any:
    from sweeper.store.db import open_database
    from sweeper.store.queue import EnqueueDiff, Queue

    if settings.is_sqlite:
        path = settings.db_url.split(":///", 1)[-1]
        if not os.path.exists(path):
            return EnqueueDiff(sweep=spec.name, new=list(spec.jobs), dry_run=True)
    database = open_database(settings.db_url, create=False)
    try:
        diff = Queue(database).diff(spec)
    finally:
        database.dispose()
    diff.dry_run = True
    return diff


def _print_diff(diff: Any, settings: Settings, *, listing: bool) -> None:
    verb = "would add" if diff.dry_run else "added"
    out.print(
        f"sweep [bold]{diff.sweep}[/]: {verb} {len(diff.new)} new job(s), {len(diff.unchanged)} unchanged, "
        f"{len(diff.gone)} no longer in the file (left alone)  [dim]{settings.display_db}[/]"
    )
    if diff.new:
        per_stage = Counter(j.stage for j in diff.new)  # in file order: Counter keeps first-seen order
        out.print("new jobs by stage: " + ", ".join(f"{stage} {n}" for stage, n in per_stage.items()))
    if diff.reprioritized:
        verb = "would change" if diff.dry_run else "changed"
        out.print(f"{verb} the priority of {len(diff.reprioritized)} job(s) not started yet")
    rows = [("new", j.id, j.stage, j.label) for j in diff.new]
    rows += [(f"priority {old} -> {j.priority}", j.id, j.stage, j.label) for j, old in diff.reprioritized]
    if listing:
        rows += [("unchanged", j.id, j.stage, j.label) for j in diff.unchanged]
    rows += [(f"not in file ({status})", jid, stage, label) for jid, stage, label, status in diff.gone]
    if not rows:
        return
    limit = None if listing else 30
    table = Table(show_edge=False, box=None, pad_edge=False)
    for col in ("", "job", "stage", "params"):
        table.add_column(col)
    for row in rows[:limit]:
        table.add_row(*row)
    out.print(table)
    if limit is not None and len(rows) > limit:
        out.print(f"... and {len(rows) - limit} more (use --dry-run to list them all)")


@app.command()
def work(
    ctx: typer.Context,
    grid: Annotated[
        Path | None,
        typer.Argument(
            help="Enqueue this grid first (idempotent, as `sweeper enqueue`), then work: one command for a "
            "notebook cell that is run again after every disconnect.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            show_default=False,
            help="Worker processes to run here (default: one per core, or one per GPU; see --jobs-per-gpu).",
        ),
    ] = None,
    threads_per_worker: Annotated[
        int | None,
        typer.Option(
            "--threads-per-worker",
            min=1,
            show_default=False,
            help="Torch threads per worker process (default: 1 on CPU; cores // workers with --workers or GPUs).",
        ),
    ] = None,
    jobs_per_gpu: Annotated[
        int | None,
        typer.Option(
            "--jobs-per-gpu",
            min=1,
            show_default=False,
            help="Workers sharing each GPU, for small jobs (default: 1; ignored with --workers).",
        ),
    ] = None,
    progress_every: Annotated[
        float,
        typer.Option(
            "--progress-every",
            min=1.0,
            help="Seconds between a job's progress lines in a notebook or log (a terminal gets a live bar).",
        ),
    ] = 15.0,
    stage: Annotated[
        list[str] | None, typer.Option("--stage", help="Only claim jobs of this stage (repeatable).")
    ] = None,
    sweep: SweepOpt = None,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", min=1, help="Exit after this many jobs per worker.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Keep polling while blocked or running jobs may still produce work.")
    ] = False,
    lease_ttl: Annotated[
        float,
        typer.Option(
            "--lease-ttl",
            min=0.5,
            help="Seconds a job stays owned without a heartbeat; then another worker takes it over.",
        ),
    ] = 60.0,
    poll: Annotated[float, typer.Option("--poll", min=0.05, help="Seconds between polls when waiting.")] = 2.0,
    retry_backoff: Annotated[
        float,
        typer.Option(
            "--retry-backoff",
            min=0.0,
            help="Base seconds before retrying a failed job (doubles per failure, jittered).",
        ),
    ] = 5.0,
    store: Annotated[
        str, typer.Option("--store", help="Where checkpoints and artifacts go: files, db, or auto (db on PostgreSQL).")
    ] = "auto",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Where to look for datasets first.")] = None,
    mlflow_uri: MlflowUriOpt = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")] = False,
    db_outage_limit: Annotated[
        float,
        typer.Option(
            "--db-outage-limit", min=1.0, help="Seconds to keep retrying an unreachable database before exiting."
        ),
    ] = 120.0,
    state: StateOpt = None,
    db: DbOpt = None,
    mirror: MirrorOpt = "auto",
    take_over: TakeOverOpt = False,
) -> None:
    """Claim jobs and run them, checkpointing as they go. Exits when no runnable job is left.

    The first Ctrl-C (or SIGTERM) lets the running job checkpoint and gives it back to the queue;
    a second one exits at once. A job whose worker vanished is taken over after --lease-ttl.

    With the state on a network mount (Google Drive on Colab) the queue runs from a local copy and
    snapshots go to the state directory (see --mirror); one session at a time may use that state.
    With --wait, a live lease of another session (the VM before a disconnect) is waited out with a
    countdown, then this session takes over and resumes.
    """
    if store not in ("auto", "files", "db"):
        raise UsageError(f"--store must be files, db or auto, not {store!r}")
    from sweeper.running.worker import WorkerOptions, run_workers

    spec = None
    if grid is not None:  # read before the state is opened: a typo fails at once, not after a lease wait
        from sweeper.grid.spec import load_spec

        spec = load_spec(grid)
    settings = _settings(ctx, state, db, mlflow_uri, tracking=not no_tracking)
    session = _state_session(ctx, settings)
    if session.mirrored and store == "db":
        raise UsageError(
            "--store db keeps checkpoints inside the queue database, which in mirrored mode reaches the "
            "state directory only with each snapshot",
            hint="use --store files (the default with SQLite): checkpoint files go to the state directory at once",
        )
    if spec is not None:
        from sweeper.store.queue import Queue

        database = _open(settings, create=True)
        try:
            diff = Queue(database).enqueue(spec)
        finally:
            database.dispose()
        _print_diff(diff, settings, listing=False)
    opts = WorkerOptions(
        settings=settings,
        workers=workers,
        threads_per_worker=threads_per_worker,
        jobs_per_gpu=jobs_per_gpu,
        progress_every_s=progress_every,
        stages=tuple(stage or ()),
        sweep=sweep,
        max_jobs=max_jobs,
        wait=wait,
        lease_ttl_s=lease_ttl,
        poll_s=poll,
        retry_backoff_s=retry_backoff,
        store=store,
        db_outage_s=db_outage_limit,
        data_dir=str(data_dir) if data_dir else None,
        scan_checkpoints=session.mirrored,  # files written after the last snapshot
        mirror_lineage=session.lineage if session.mirrored else None,
    )
    code = run_workers(opts)
    raise typer.Exit(code)


@app.command()
def status(
    ctx: typer.Context,
    sweep: SweepOpt = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            show_default=False,
            help="Rank the leaderboard by this result metric; append :max or :min to set the direction "
            "(default: min for times, losses and sizes, else max). A metric no finished job reports is an "
            "error. [default: test_accuracy]",
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=0, help="Leaderboard rows (0 hides it).")] = 5,
    failures: Annotated[int, typer.Option("--failures", min=0, help="Recent failures to list.")] = 5,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw live until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Seconds between redraws with --watch.")] = 2.0,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one snapshot as JSON (schema sweeper.status/1, see docs/status-json.md)."),
    ] = False,
    state: StateOpt = None,
    db: DbOpt = None,
    mirror: MirrorOpt = "auto",
) -> None:
    """Progress per stage with ETA, running jobs, the leaderboard, recent failures and workers.

    Reads the queue only (never torch or MLflow), so it is quick to run from any machine.
    """
    from sweeper.grid.ranking import parse_metric
    from sweeper.views.dashboard import collect, to_json
    from sweeper.views.dashview import render
    from sweeper.views.dashview import watch as watch_status

    if watch and as_json:
        raise UsageError("--watch and --json do not go together", hint="poll `sweeper status --json` instead")
    metric = parse_metric(by or "test_accuracy")
    settings = _settings(ctx, state, db, tracking=False)
    database = _open(settings, create=False)
    try:
        if sweep:
            from sweeper.store.results import require_sweep

            require_sweep(database, sweep)
        if by is not None and top > 0:  # the default may simply not apply to this sweep's jobs
            from sweeper.views.dashboard import check_metric

            check_metric(database, metric, sweep, option="--by")
        read = lambda: collect(database, sweep, by=metric, top=top, failures=failures)  # noqa: E731
        if watch:
            watch_status(read, out, interval=interval)
            return
        snap = read()
    finally:
        database.dispose()
    if as_json:
        sys.stdout.write(mask_password(json.dumps(_with_mirror(ctx, to_json(snap), settings), indent=2)) + "\n")
        return
    out.print(render(snap, out.width))
    for line in _mirror_lines(ctx, settings):
        out.print(line, style="yellow" if line.startswith("recovered") else "dim", markup=False)


@app.command()
def show(
    ctx: typer.Context,
    job_id: Annotated[
        str, typer.Argument(help="Job id (or a unique prefix of at least 4 characters).", show_default=False)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON (schema sweeper.job/1).")] = False,
    no_traceback: Annotated[bool, typer.Option("--no-traceback", help="Only the error's summary line.")] = False,
    state: StateOpt = None,
    db: DbOpt = None,
    mirror: MirrorOpt = "auto",
) -> None:
    """Everything about one job: params as written and as resolved, attempts, metrics, files, the error."""
    from sweeper.store.readmodel import resolve_job_id
    from sweeper.views.show import collect_job, render, to_json

    settings = _settings(ctx, state, db, tracking=False)
    database = _open(settings, create=False)
    try:
        with database.read() as conn:
            full_id = resolve_job_id(conn, job_id)
        detail = collect_job(database, full_id, settings.state_dir)
    finally:
        database.dispose()
    if as_json:
        sys.stdout.write(mask_password(json.dumps(to_json(detail), indent=2, default=str)) + "\n")
        return
    out.print(render(detail, traceback=not no_traceback))


@app.command()
def export(
    ctx: typer.Context,
    csv_file: Annotated[
        str,
        typer.Option(
            "--csv",
            help="Write CSV to this file ('-' for stdout): one row per job, params.* and metrics.* columns.",
            show_default=False,
        ),
    ],
    sweep: SweepOpt = None,
    stage: Annotated[str | None, typer.Option("--stage", help="Only this stage.")] = None,
    status_filter: Annotated[
        list[str] | None, typer.Option("--status", help="Only jobs in this state (repeatable), e.g. --status done.")
    ] = None,
    state: StateOpt = None,
    db: DbOpt = None,
    mirror: MirrorOpt = "auto",
) -> None:
    """Every job with its flattened params and metrics, as CSV (for pandas, Facets, a spreadsheet)."""
    from sweeper.store.db import STATUSES
    from sweeper.store.results import load_jobs
    from sweeper.views.export import write_csv

    bad = [s for s in status_filter or [] if s not in STATUSES]
    if bad:
        raise UsageError(f"--status {bad[0]!r} is not a job state", hint=f"states: {', '.join(STATUSES)}")
    settings = _settings(ctx, state, db, tracking=False)
    database = _open(settings, create=False)
    try:
        if sweep:
            from sweeper.store.results import require_sweep

            require_sweep(database, sweep)
        records = load_jobs(database, sweep, stage, status_filter or None)
    finally:
        database.dispose()
    if csv_file == "-":
        write_csv(records, sys.stdout)
        return
    import io

    from sweeper.store.checkpoints import atomic_write

    buf = io.StringIO()
    n = write_csv(records, buf)
    atomic_write(Path(csv_file), buf.getvalue().encode("utf-8"))
    out.print(f"wrote {n} job(s) to {csv_file}")


@app.command()
def report(
    ctx: typer.Context,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for report.md and its PNGs (created; files overwritten).")
    ],
    sweep: Annotated[
        str | None, typer.Option("--sweep", help="The sweep to report on (default: the only sweep in the queue).")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            show_default=False,
            help="Primary metric: tables sorted by it, top-k, Pareto y axis. NAME[:max|min]. [default: test_accuracy]",
        ),
    ] = None,
    second: Annotated[
        str | None,
        typer.Option(
            "--second",
            show_default=False,
            help="Secondary metric: a second sorted table, Pareto x axis. NAME[:max|min]. [default: time_to_target_s]",
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows of the top-k tables.")] = 3,
    plugin: Annotated[
        list[str] | None,
        typer.Option("--plugin", help="Only these report plug-ins (entry-point names or module:function; repeatable)."),
    ] = None,
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Only the generic sections.")] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Tables only, no PNGs (faster).")] = False,
    mlflow_screenshot: Annotated[
        bool,
        typer.Option(
            "--mlflow-screenshot",
            help="Also save the MLflow UI's runs table as mlflow-runs.png, and each stage's as mlflow-<stage>.png, "
            "and show them in the report: starts `mlflow server` on the tracking store and takes the pictures with "
            "headless Chromium (offline).",
        ),
    ] = False,
    pdf: Annotated[
        bool,
        typer.Option("--pdf", help="Also print the report, figures included, to report.pdf with headless Chromium."),
    ] = False,
    mlflow_uri: MlflowUriOpt = None,
    state: StateOpt = None,
    db: DbOpt = None,
    mirror: MirrorOpt = "auto",
) -> None:
    """Write a Markdown report of a sweep: per-stage tables, top-k, Pareto and scatter plots, plug-in sections.

    Reads the queue and the artifact store (sha256-verified); needs neither MLflow nor a running worker
    (except for --mlflow-screenshot).
    """
    from sweeper.grid.ranking import parse_metric
    from sweeper.store.results import SweepView, only_sweep
    from sweeper.views.report import ReportOptions, write_report

    opts = ReportOptions(
        primary=parse_metric(metric or "test_accuracy", option="--metric"),
        secondary=parse_metric(second or "time_to_target_s", option="--second"),
        top=top,
        plugins=[] if no_plugins else plugin,
        plots=not no_plots,
    )
    settings = _settings(ctx, state, db, mlflow_uri, tracking=mlflow_screenshot)
    database = _open(settings, create=False)
    try:
        name = sweep or only_sweep(database)
        from sweeper.views.dashboard import check_metric

        # A metric given by name must exist; the defaults may not apply to this sweep's jobs.
        for given, option, parsed in ((metric, "--metric", opts.primary), (second, "--second", opts.secondary)):
            if given is not None:
                check_metric(database, parsed, name, option=option)
        view = SweepView(database, settings.state_dir, name, out_dir)
        if mlflow_screenshot:
            view.mlflow_screenshot = _mlflow_screenshot(settings, name, out_dir)
            view.mlflow_stage_screenshots = _mlflow_stage_screenshots(settings, name, out_dir)
        result = write_report(view, out_dir, opts, log=lambda msg: err.print(f"[dim]{msg}[/]", highlight=False))
    finally:
        database.dispose()
    for note in result.notes:
        err.print(f"[yellow]warning:[/] {note}")
    out.print(f"wrote {result.path} ({len(result.sections)} sections, {len(result.figures)} figures)")
    if pdf:
        from sweeper.views.report_pdf import write_pdf

        out.print(f"wrote {write_pdf(Path(result.path))}")


def _mlflow_screenshot(settings: Settings, sweep: str, out_dir: Path) -> str:
    from sweeper.views.mlflow_shot import take_screenshot

    uri = settings.tracking_uri
    assert uri is not None, "resolved with tracking on"
    err.print(f"[dim]MLflow screenshot: mlflow server on {uri.split('://', 1)[0]}, headless Chromium[/]")
    name = "mlflow-runs.png"
    take_screenshot(uri, sweep, out_dir / name)
    return name


def _mlflow_stage_screenshots(settings: Settings, sweep: str, out_dir: Path) -> dict[str, str]:
    from sweeper.views.mlflow_shot import take_stage_screenshots

    assert settings.tracking_uri is not None, "resolved with tracking on"
    return take_stage_screenshots(settings.tracking_uri, sweep, out_dir)


def _selection(job_ids: list[str] | None, failed: bool, stage: str | None, sweep: str | None, verb: str) -> None:
    if not job_ids and not failed and not stage and not sweep:
        raise UsageError(f"say which jobs to {verb}: job ids, --failed, --stage or --sweep")


@app.command()
def retry(
    ctx: typer.Context,
    job_ids: Annotated[
        list[str] | None, typer.Argument(help="Job ids (or unique prefixes).", show_default=False)
    ] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every failed job (within --stage/--sweep).")] = False,
    stage: Annotated[str | None, typer.Option("--stage", help="Failed and cancelled jobs of this stage.")] = None,
    sweep: SweepOpt = None,
    state: StateOpt = None,
    db: DbOpt = None,
    mirror: MirrorOpt = "auto",
    take_over: TakeOverOpt = False,
    no_wait: NoWaitOpt = False,
) -> None:
    """Put failed or cancelled jobs back in the queue with their failure counts reset."""

    _selection(job_ids, failed, stage, sweep, "retry")
    wanted = ("failed",) if failed else ("failed", "cancelled")
    notes: list[str] = []

    def change(queue: Any, ids: list[str]) -> list[str]:
        _check_selection(queue.db, stage, sweep)
        picked = queue.retry(ids, stage=stage, sweep=sweep, include_cancelled=not failed)
        notes.extend(_why_untouched(queue.db, ids, picked, wanted, stage, sweep))
        return picked

    picked = _change_jobs(ctx, state, db, job_ids, change)
    out.print(f"retrying {len(picked)} job(s)" + (f": {', '.join(picked[:20])}" if picked else ""))
    _print_untouched(notes, f"retry takes {' or '.join(wanted)} jobs")


@app.command()
def cancel(
    ctx: typer.Context,
    job_ids: Annotated[
        list[str] | None, typer.Argument(help="Job ids (or unique prefixes).", show_default=False)
    ] = None,
    stage: Annotated[str | None, typer.Option("--stage", help="Every unfinished job of this stage.")] = None,
    sweep: SweepOpt = None,
    state: StateOpt = None,
    db: DbOpt = None,
    mirror: MirrorOpt = "auto",
    take_over: TakeOverOpt = False,
    no_wait: NoWaitOpt = False,
) -> None:
    """Cancel jobs that have not finished. A running job is dropped by its worker at the next heartbeat."""

    _selection(job_ids, False, stage, sweep, "cancel")
    from sweeper.store.db import ACTIVE

    notes: list[str] = []

    def change(queue: Any, ids: list[str]) -> list[str]:
        _check_selection(queue.db, stage, sweep)
        picked = queue.cancel(ids, stage=stage, sweep=sweep)
        notes.extend(_why_untouched(queue.db, ids, picked, ACTIVE, stage, sweep))
        return picked

    picked = _change_jobs(ctx, state, db, job_ids, change)
    out.print(f"cancelled {len(picked)} job(s)" + (f": {', '.join(picked[:20])}" if picked else ""))
    _print_untouched(notes, "cancel takes jobs that have not finished")


def _check_selection(database: Any, stage: str | None, sweep: str | None) -> None:
    """--sweep and --stage must name what exists: a typo would otherwise change nothing, silently."""
    from sweeper.store.results import require_stage, require_sweep

    if sweep:
        require_sweep(database, sweep)
    if stage:
        require_stage(database, stage, sweep)


def _why_untouched(database: Any, ids: list[str], picked: list[str], wanted: Any, stage: Any, sweep: Any) -> list[str]:
    from sweeper.store.results import why_untouched

    return why_untouched(database, ids, picked, wanted, stage, sweep)


def _print_untouched(notes: list[str], rule: str) -> None:
    for note in notes[:20]:
        out.print(f"  {note}: nothing to do ({rule})", markup=False)
    if len(notes) > 20:
        out.print(f"  ... and {len(notes) - 20} more", markup=False)


def _change_jobs(
    ctx: typer.Context, state: Path | None, db: str | None, job_ids: list[str] | None, change: Any
) -> list[str]:
    """Resolve job id prefixes, then apply `change(queue, ids)` (retry or cancel) in the queue."""
    from sweeper.store.queue import Queue
    from sweeper.store.readmodel import resolve_job_id

    settings = _settings(ctx, state, db, tracking=False)
    database = _open(settings, create=False)
    try:
        with database.read() as conn:
            ids = [resolve_job_id(conn, j) for j in job_ids or []]
        return change(Queue(database), ids)
    finally:
        database.dispose()


def main() -> None:
    # Nothing the tool creates under the state directory should be world-writable.
    os.umask(os.umask(0o022) | 0o002)
    try:
        app()
    except SweeperError as exc:
        err.print(Text.assemble(("error: ", "bold red"), mask_password(exc.message)))
        if exc.hint:
            err.print(f"  hint: {mask_password(exc.hint)}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
