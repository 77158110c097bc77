"""The `sweeper` command: parses options, calls the library, prints. Nothing else lives here.

Errors meant for the user are SweeperError subclasses; `main()` prints them without a traceback
and exits with their code (2 for bad input, 3 for an unreachable or incompatible database).

Options: a command's own options are typed parameters of its function (add one there). The options
every command shares (--state, --db, --mirror, ...) are declared once, in sweeper/cli_options.py,
and reach a command as one SharedOptions through `@shared_options(...)`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from sweeper.cli_options import (
    READS,
    WRITES,
    JobIdsArg,
    MlflowUriOpt,
    SharedOptions,
    SweepOpt,
    shared_options,
)
from sweeper.config import Settings, mask_password
from sweeper.errors import SweeperError, UsageError
from sweeper.views import safe_text

if TYPE_CHECKING:
    from sweeper.store.admin import JobChange
    from sweeper.store.db import Database

app = typer.Typer(
    help="Resumable hyperparameter sweeps: enqueue a grid, run workers anywhere, watch and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


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


@contextmanager
def open_db(settings: Settings, *, create: bool = False, readonly: bool = False) -> Iterator[Database]:
    """The queue database for a `with` block. Interactive commands give up on an unreachable
    database quickly; workers wait longer. `readonly`: a command that only reads, which works on a
    state directory it may not write."""
    from sweeper.store.db import OutagePolicy
    from sweeper.store.db import open_db as open_queue

    with open_queue(settings.db_url, create=create, outage=OutagePolicy.interactive(), readonly=readonly) as database:
        yield database


@app.command()
@shared_options(*WRITES)
def enqueue(
    grid: Annotated[Path, typer.Argument(help="The grid file (YAML) describing the sweep.", show_default=False)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the jobs without writing anything.")] = False,
    *,
    shared: SharedOptions,
) -> None:
    """Turn every configuration of GRID into a job. Safe to run again: only new jobs are added."""
    from sweeper.grid.spec import load_spec

    spec = load_spec(grid)
    _enqueue(shared.open(dry_run=dry_run).settings, spec, dry_run=dry_run)


def _enqueue(settings: Settings, spec: Any, *, dry_run: bool = False) -> None:
    """enqueue, and `work GRID`: add the grid's new jobs (or only list them) and say what changed."""
    from sweeper.store.admin import preview_enqueue
    from sweeper.store.queue import Queue
    from sweeper.views.enqueued import print_diff

    if dry_run:
        print_diff(out, preview_enqueue(settings.db_url, spec), settings.display_db, listing=True)
        return
    with open_db(settings, create=True) as database:
        diff = Queue(database).enqueue(spec)
    print_diff(out, diff, settings.display_db, listing=False)


@app.command()
@shared_options(*READS, "take_over")
def work(
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
    *,
    shared: SharedOptions,
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
    from sweeper.mirrored.session import check_store

    session = shared.open(mlflow_uri=mlflow_uri, tracking=not no_tracking, wait=wait)
    settings = session.settings
    check_store(session, store)
    if spec is not None:
        _enqueue(settings, spec)
    if stage or sweep:  # a typo would otherwise find "no runnable job" and exit 0
        from sweeper.store.selection import require_selection

        with open_db(settings) as database:
            require_selection(database, sweep, stage)
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
    raise typer.Exit(run_workers(opts))


@app.command()
@shared_options(*READS)
def status(
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
    *,
    shared: SharedOptions,
) -> None:
    """Progress per stage with ETA, running jobs, the leaderboard, recent failures and workers.

    Reads the queue only (never torch or MLflow), so it is quick to run from any machine.
    """
    from sweeper.grid.ranking import parse_metric
    from sweeper.mirrored.session import mirror_info, mirror_lines
    from sweeper.views.dashboard import check_metric, collect, to_json
    from sweeper.views.dashview import render
    from sweeper.views.dashview import watch as watch_status

    if watch and as_json:
        raise UsageError("--watch and --json do not go together", hint="poll `sweeper status --json` instead")
    metric = parse_metric(by or "test_accuracy")
    session = shared.open()
    with open_db(session.settings, readonly=True) as database:
        from sweeper.store.selection import require_selection

        require_selection(database, sweep)
        if by is not None and top > 0:  # the default may simply not apply to this sweep's jobs
            check_metric(database, metric, sweep, option="--by")
        read = lambda: collect(database, sweep, by=metric, top=top, failures=failures)  # noqa: E731
        if watch:
            watch_status(read, out, interval=interval)
            return
        snap = read()
        mirror = mirror_info(session, database)
    if as_json:
        payload = to_json(snap) if mirror is None else {**to_json(snap), "mirror": mirror}
        sys.stdout.write(mask_password(json.dumps(payload, indent=2)) + "\n")
        return
    out.print(render(snap, out.width))
    for line in mirror_lines(mirror):
        out.print(line, style="yellow" if line.startswith("recovered") else "dim", markup=False)


@app.command()
@shared_options(*READS)
def show(
    job_id: Annotated[
        str, typer.Argument(help="Job id (or a unique prefix of at least 4 characters).", show_default=False)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON (schema sweeper.job/1).")] = False,
    no_traceback: Annotated[bool, typer.Option("--no-traceback", help="Only the error's summary line.")] = False,
    *,
    shared: SharedOptions,
) -> None:
    """Everything about one job: params as written and as resolved, attempts, metrics, files, the error."""
    from sweeper.store.readmodel import resolve_job_id
    from sweeper.views.show import collect_job, render, to_json

    settings = shared.open().settings
    with open_db(settings, readonly=True) as database:
        with database.read() as conn:
            full_id = resolve_job_id(conn, job_id)
        detail = collect_job(database, full_id, settings.state_dir)
    if as_json:
        sys.stdout.write(mask_password(json.dumps(to_json(detail), indent=2, default=str)) + "\n")
        return
    out.print(render(detail, traceback=not no_traceback))


@app.command()
@shared_options(*READS)
def export(
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
    *,
    shared: SharedOptions,
) -> None:
    """Every job with its flattened params and metrics, as CSV (for pandas, Facets, a spreadsheet)."""
    from sweeper.store.db import STATUSES
    from sweeper.store.results import load_jobs
    from sweeper.store.selection import require_selection
    from sweeper.views.export import write_csv, write_csv_file
    from sweeper.views.outputs import csv_file as csv_destination

    bad = [s for s in status_filter or [] if s not in STATUSES]
    if bad:
        raise UsageError(f"--status {bad[0]!r} is not a job state", hint=f"states: {', '.join(STATUSES)}")
    target = csv_destination(csv_file)  # a missing directory fails before the queue is read
    with open_db(shared.open().settings, readonly=True) as database:
        require_selection(database, sweep, stage)
        records = load_jobs(database, sweep, stage, status_filter or None)
    if target is None:
        write_csv(records, sys.stdout)
        return
    n = write_csv_file(records, target)
    out.print(f"wrote {n} job(s) to {csv_file}")


@app.command()
@shared_options(*READS)
def report(
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
    *,
    shared: SharedOptions,
) -> None:
    """Write a Markdown report of a sweep: per-stage tables, top-k, Pareto and scatter plots, plug-in sections.

    Reads the queue and the artifact store (sha256-verified); needs neither MLflow nor a running worker
    (except for --mlflow-screenshot).
    """
    from sweeper.grid.ranking import parse_metric
    from sweeper.store.results import SweepView
    from sweeper.store.selection import only_sweep, require_selection
    from sweeper.views.dashboard import check_metric
    from sweeper.views.outputs import report_dir
    from sweeper.views.report import ReportOptions, write_report

    out_dir = report_dir(out_dir)  # a file in the way fails before the queue is read

    opts = ReportOptions(
        primary=parse_metric(metric or "test_accuracy", option="--metric"),
        secondary=parse_metric(second or "time_to_target_s", option="--second"),
        top=top,
        plugins=[] if no_plugins else plugin,
        plots=not no_plots,
    )
    settings = shared.open(mlflow_uri=mlflow_uri, tracking=mlflow_screenshot).settings
    log = lambda msg: err.print(safe_text.text(msg, "dim"))  # noqa: E731
    with open_db(settings, readonly=True) as database:
        name = sweep or only_sweep(database)
        require_selection(database, name)
        # A metric given by name must exist; the defaults may not apply to this sweep's jobs.
        for given, option, parsed in ((metric, "--metric", opts.primary), (second, "--second", opts.secondary)):
            if given is not None:
                check_metric(database, parsed, name, option=option)
        view = SweepView(database, settings.state_dir, name, out_dir)
        if mlflow_screenshot:
            from sweeper.views.mlflow_shot import take_screenshot, take_stage_screenshots

            uri = settings.tracking_uri
            assert uri is not None, "resolved with tracking on"
            log(f"MLflow screenshot: mlflow server on {uri.split('://', 1)[0]}, headless Chromium")
            view.mlflow_screenshot = take_screenshot(uri, name, out_dir / "mlflow-runs.png").name
            view.mlflow_stage_screenshots = take_stage_screenshots(uri, name, out_dir)  # one table per stage
        result = write_report(view, out_dir, opts, log=log)
    for note in result.notes:
        err.print(f"[yellow]warning:[/] {safe_text.markup(note)}")
    out.print(f"wrote {result.path} ({len(result.sections)} sections, {len(result.figures)} figures)")
    if result.appendix is not None:
        out.print(f"wrote {result.appendix} (every stage in detail, linked from the report's appendix)")
    if pdf:
        from sweeper.views.report_pdf import write_pdf

        out.print(f"wrote {write_pdf(Path(result.path))}")


@app.command()
@shared_options(*WRITES)
def retry(
    job_ids: JobIdsArg = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every failed job (within --stage/--sweep).")] = False,
    stage: Annotated[str | None, typer.Option("--stage", help="Failed and cancelled jobs of this stage.")] = None,
    sweep: SweepOpt = None,
    stale: Annotated[
        bool,
        typer.Option("--stale", help="Run the finished jobs whose upstream stage changed since (stale) again."),
    ] = False,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="Start jobs whose checkpoints were refused as possibly malicious over without them "
            "(they stay in quarantine/); without it such a job fails again at once.",
        ),
    ] = False,
    *,
    shared: SharedOptions,
) -> None:
    """Put failed or cancelled jobs back in the queue with their failure counts reset."""
    from sweeper.store.admin import rerunning_stale, retrying

    if stale:  # every stale job unless ids, --stage or --sweep narrow it
        settings = shared.open(tracking=True).settings
        warn = lambda m: err.print(Text.assemble(("warning: ", "yellow"), safe_text.text(m)))  # noqa: E731
        _apply_change(settings, rerunning_stale(settings.state_dir, settings.tracking_uri, warn), job_ids, stage, sweep)
        return
    _require_selection_given("retry", job_ids, stage, sweep, everything=failed)
    change = retrying(failed_only=failed, from_scratch=from_scratch)
    _apply_change(shared.open().settings, change, job_ids, stage, sweep)


@app.command()
@shared_options(*WRITES)
def cancel(
    job_ids: JobIdsArg = None,
    stage: Annotated[str | None, typer.Option("--stage", help="Every unfinished job of this stage.")] = None,
    sweep: SweepOpt = None,
    *,
    shared: SharedOptions,
) -> None:
    """Cancel jobs that have not finished. A running job is dropped by its worker at the next heartbeat."""
    from sweeper.store.admin import cancelling

    _require_selection_given("cancel", job_ids, stage, sweep)
    _apply_change(shared.open().settings, cancelling(), job_ids, stage, sweep)


def _require_selection_given(
    verb: str, job_ids: list[str] | None, stage: str | None, sweep: str | None, *, everything: bool = False
) -> None:
    if not job_ids and not everything and not stage and not sweep:
        raise UsageError(f"say which jobs to {verb}: job ids, --failed, --stage or --sweep")


def _apply_change(
    settings: Settings, change: JobChange, job_ids: list[str] | None, stage: str | None, sweep: str | None
) -> None:
    """retry and cancel: one implementation (sweeper/store/admin.py) for every JobChange."""
    from sweeper.store.admin import change_jobs

    with open_db(settings) as database:
        result = change_jobs(database, change, job_ids or [], stage=stage, sweep=sweep)
    picked = result.changed
    out.print(f"{change.done(len(picked))}" + (f": {', '.join(picked[:20])}" if picked else ""))
    for note in result.untouched[:20]:
        out.print(f"  {note}: nothing to do ({change.rule})", markup=False)
    if len(result.untouched) > 20:
        out.print(f"  ... and {len(result.untouched) - 20} more", markup=False)


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
