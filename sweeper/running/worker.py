"""The work loop: claim a job, run it under a heartbeat, record how it ended, repeat.

One worker process runs one job at a time. `--workers N` starts N such processes and supervises
them; without it workerplan.py picks (one per core with one thread, or one per GPU), and the
running job's progress goes to the worker's own output (progress.py). Signals: the first SIGTERM or Ctrl-C asks the running job to stop at its next safe point
(it checkpoints and the job is released without counting a failure); a second one exits at once.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sweeper import mappings
from sweeper.config import Settings, mask_password
from sweeper.context import Interrupted, JobContext, JobFailed
from sweeper.errors import DatabaseUnavailable, LeaseLost, RefusedCheckpoint, SweeperError, UnsafePath, error_summary
from sweeper.grid import registry
from sweeper.mirrored.recovery import record_result, recorded_result
from sweeper.running.progress import make_view
from sweeper.running.tracking import RunInfo, make_tracker, open_job_run
from sweeper.running.workerplan import WorkerPlan, available_cpus, plan_here
from sweeper.store.checkpoints import ArtifactStore, CheckpointStore
from sweeper.store.db import OutagePolicy, open_database
from sweeper.store.queue import ClaimedJob, Queue
from sweeper.store.readmodel import failed_job_ids, work_summary
from sweeper.views.safe_text import visible


@dataclass(frozen=True)
class WorkerOptions:
    settings: Settings
    workers: int | None = 1  # None: one per core (or per GPU), see workerplan.py
    threads_per_worker: int | None = None
    jobs_per_gpu: int | None = None  # workers sharing each GPU when workers is None
    gpu: str | None = None  # this worker's CUDA_VISIBLE_DEVICES, set by the plan
    stages: tuple[str, ...] = ()
    sweep: str | None = None
    max_jobs: int | None = None
    wait: bool = False
    lease_ttl_s: float = 60.0
    poll_s: float = 2.0
    retry_backoff_s: float = 5.0
    store: str = "auto"  # files | db | auto (db on PostgreSQL, files on SQLite)
    db_outage_s: float = 120.0
    data_dir: str | None = None
    progress_every_s: float | None = None  # between plain progress lines (progress.DEFAULT_EVERY_S)
    # Mirrored mode (mirror.py): the database on the mount lags the live one by up to a snapshot.
    scan_checkpoints: bool = False  # also restore checkpoint files newer than the database knows
    mirror_lineage: str | None = None  # record each result in a file first (recovery.py)

    @property
    def threads(self) -> int:
        if self.threads_per_worker:
            return max(1, self.threads_per_worker)
        return max(1, available_cpus() // max(1, self.workers or 1))

    @property
    def store_mode(self) -> str:
        if self.store != "auto":
            return self.store
        return "files" if self.settings.is_sqlite else "db"


def configure_threads(threads: int) -> None:
    """Pin the math libraries to `threads`: one thread per process beats two in one on small nets.

    The environment variables reach torch when a job kind first imports it; a worker that only
    runs torch-free kinds never pays for importing torch.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    apply_torch_threads(threads)


def apply_torch_threads(threads: int) -> None:
    torch = sys.modules.get("torch")
    if torch is None or torch.get_num_threads() == threads:
        return
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set: parallel work has run in this process
        torch.set_num_interop_threads(1)


class Heartbeat(threading.Thread):
    """Renews the lease of the job being run and publishes its progress; beats for the idle worker.

    One thread per worker process for its whole life (starting a thread per job costs more than
    a no-op job). `detach()` returns only once no renewal for the finished job is in flight, so
    the final write (complete, fail, release) never races a renewal with the same token.

    It never exits on an error: a renewal retries a database that does not answer for as long as
    the outage policy allows. Past that limit it sets `db_down` and asks the running job to stop
    at its next safe point (checkpoint and release, if the database is back by then); the worker
    claims nothing more and exits with the outage's code. A heartbeat that died silently would
    let its worker run the next job unrenewed, and another worker would take it over and run it
    a second time.
    """

    def __init__(self, queue: Queue, worker_id: str, ttl_s: float, log: Callable[[str], None]) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.queue = queue
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.interval = max(0.05, min(ttl_s / 3.0, 5.0))
        self.log = log
        self.db_down: DatabaseUnavailable | None = None
        self._ctx: JobContext | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def attach(self, ctx: JobContext) -> None:
        with self._lock:
            self._ctx = ctx

    def detach(self) -> None:
        with self._lock:
            self._ctx = None

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            with self._lock:
                ctx = self._ctx
                try:
                    if ctx is None:
                        self.queue.worker_heartbeat(self.worker_id)
                        continue
                    progress = ctx.take_progress()
                    self.queue.renew(
                        ctx.job.lease,
                        self.ttl_s,
                        progress.fraction if progress else None,
                        progress.message if progress else None,
                    )
                except LeaseLost:
                    if ctx is not None:
                        self.log(f"job {ctx.job_id}: lease lost (taken over or cancelled); stopping it")
                        ctx.mark_lease_lost()
                    self._ctx = None
                except DatabaseUnavailable as exc:
                    if self.db_down is None:
                        what = f"; stopping job {ctx.job_id} at its next checkpoint" if ctx is not None else ""
                        self.log(f"heartbeat gave up: {exc}{what}")
                    self.db_down = exc
                    if ctx is not None:
                        ctx.request_stop("database unreachable")
                except Exception as exc:  # keep beating; the next renewal may work
                    self.log(f"heartbeat failed: {exc}")

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=30)


class Worker:
    """One worker process: claims and runs jobs until there is nothing left (or it is told to stop)."""

    def __init__(
        self, opts: WorkerOptions, index: int | None = None, console_log: Callable[[str], None] | None = None
    ) -> None:
        self.opts = opts
        self.index = index
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._stop = threading.Event()
        self._ctx: JobContext | None = None
        self._parent = os.getppid()
        self._print = console_log or _stderr_line
        self.jobs_run = 0
        self.view: Any = None
        self.heartbeat: Heartbeat | None = None

    # -- logging -----------------------------------------------------------------------------

    def log(self, message: str) -> None:
        who = f"worker {self.id.split(':')[1]}"
        # Messages quote the queue (job labels, errors, progress): control characters made visible.
        self._print(f"{time.strftime('%H:%M:%S')} {who} {visible(mask_password(message), lines=True)}")

    # -- signals -----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop.is_set():
            self.log("second signal: exiting now without releasing (the lease will expire)")
            os._exit(130)
        self._stop.set()
        if self._ctx is not None:
            self._ctx.request_stop()
            self.log(
                f"{signal.Signals(signum).name}: job {self._ctx.job_id} will checkpoint and be released; "
                "send it again to exit at once"
            )
        else:
            self.log(f"{signal.Signals(signum).name}: stopping")

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    # -- main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        configure_threads(self.opts.threads)
        self._install_signals()
        settings = self.opts.settings
        try:
            db = open_database(
                settings.db_url, create=True, outage=OutagePolicy(limit_s=self.opts.db_outage_s, log=self.log)
            )
        except SweeperError as exc:
            self.log(str(exc))
            return exc.exit_code
        queue = Queue(db, retry_backoff_s=self.opts.retry_backoff_s, reap_every_s=min(1.0, self.opts.lease_ttl_s / 4))
        self.queue = queue
        mode = self.opts.store_mode
        self.checkpoints = CheckpointStore(db, settings.state_dir, mode, fence=queue.in_lease, warn=self.log)
        self.artifacts = ArtifactStore(db, settings.state_dir, mode, fence=queue.in_lease)
        try:
            queue.register_worker(self.id, socket.gethostname(), os.getpid(), self.opts.threads)
            self.log(
                f"started on {db.display_url} ({self.opts.threads} thread(s), "
                f"lease {self.opts.lease_ttl_s:g}s, store {self.opts.store_mode})"
            )
            self.heartbeat = Heartbeat(queue, self.id, self.opts.lease_ttl_s, self.log)
            self.heartbeat.start()
            self._loop(queue)
            return 0
        except DatabaseUnavailable as exc:
            self.log(f"giving up: {exc}")
            return exc.exit_code
        finally:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            try:
                queue.db.outage.limit_s = min(queue.db.outage.limit_s, 5.0)
                queue.stop_worker(self.id)
            except Exception:
                pass
            db.dispose()

    def _loop(self, queue: Queue) -> None:
        opts = self.opts
        while not self._stop.is_set():
            if self.heartbeat is not None and self.heartbeat.db_down is not None:
                raise self.heartbeat.db_down  # no job without a heartbeat: it would run unleased
            if opts.max_jobs is not None and self.jobs_run >= opts.max_jobs:
                self.log(f"ran {self.jobs_run} job(s) (--max-jobs); exiting")
                return
            if self.index is not None and os.getppid() != self._parent:
                self.log("supervisor is gone; exiting")
                return
            job = queue.claim(self.id, opts.lease_ttl_s, stages_filter=opts.stages or None, sweep=opts.sweep)
            if job is not None:
                self.jobs_run += 1
                self._run_job(queue, job)
                continue
            left = queue.in_read(
                "read the queue", lambda conn: work_summary(conn, stages_filter=opts.stages or None, sweep=opts.sweep)
            )
            if left.pending_now:
                continue
            if left.pending_later:
                self._idle(min(opts.poll_s, (left.next_ready_in or 0) + 0.01))
                continue
            if opts.wait and (left.running or left.blocked):
                self._idle(opts.poll_s)
                continue
            what = (
                f"{left.running} running elsewhere, {left.blocked} blocked"
                if (left.running or left.blocked)
                else "queue is empty"
            )
            failed = queue.in_read(
                "read the queue",
                lambda conn: failed_job_ids(conn, stages_filter=opts.stages or None, sweep=opts.sweep),
            )
            self.log(
                f"no runnable job left ({what}); exiting"
                + ("; use --wait to keep polling" if left.running or left.blocked else "")
                + failed_note(failed)
            )
            return
        self.log("stopped")

    def _idle(self, seconds: float) -> None:
        self._stop.wait(max(0.01, seconds))

    # -- one job -----------------------------------------------------------------------------

    def _heartbeat(self) -> Heartbeat:
        assert self.heartbeat is not None, "started before the first claim"
        return self.heartbeat

    def _run_job(self, queue: Queue, job: ClaimedJob) -> None:
        opts = self.opts
        settings = opts.settings
        tracker = make_tracker(settings.tracking_uri, settings.state_dir, settings.db_url)
        ctx = JobContext(
            job=job,
            queue=queue,
            checkpoints=self.checkpoints,
            artifacts=self.artifacts,
            tracker=tracker,
            threads=opts.threads,
            state_dir=settings.state_dir,
            options={"data_dir": opts.data_dir},
            log=self.log,
            scan_checkpoints=opts.scan_checkpoints,
        )
        if self._stop.is_set():
            ctx.request_stop()
        self._ctx = ctx
        started = time.monotonic()
        resumed = f", resuming after {job.interruptions} interruption(s)" if job.interruptions else ""
        self.log(f"claimed {job.id} [{job.stage}] {job.label} (attempt {job.attempt}{resumed})")
        if self.view is not None:
            ctx.on_progress = self.view.updater(job)
        heartbeat = self._heartbeat()
        heartbeat.attach(ctx)
        run_status = "FAILED"
        # The run is shared by every attempt of the job. Each ending below first checks that this
        # worker still holds the lease, then closes the run, then records the ending in the queue:
        # once the queue has it, the job may be another worker's, and so may the run. A zombie (a
        # worker frozen past its lease) never touches the run: not its status, not its points.
        try:
            result, error, retry = self._call(queue, job, ctx, tracker)
            heartbeat.detach()  # from here on no renewal races the final write
            if error is not None:
                queue.verify_lease(job.lease)
                self._end_run(tracker, job, "FAILED")
                run_status = "CLOSED"
                self._record_failure(queue, job, error, retry=retry)
            elif isinstance(result, Interrupted):
                queue.verify_lease(job.lease)  # a job stopped for a lost lease writes nothing more
                self._end_run(tracker, job, "KILLED")  # KILLED: the next attempt reopens the run
                run_status = "CLOSED"
                status = queue.release(job.lease, result.reason)
                self.log(f"released {job.id} ({result.reason}); it is {status} again")
            else:
                # The points logged after the last checkpoint are not fenced by one: a worker that
                # was frozen past its lease must not write them over its successor's.
                queue.verify_lease(job.lease)
                # The run is closed before the completion is recorded: a worker killed between the
                # two leaves a job that runs again (and finds its run finished), never a done job
                # whose run says RUNNING forever.
                self._end_run(tracker, job, "FINISHED")
                run_status = "CLOSED"
                self._record_result(queue, job, result)
                queue.complete(job.lease, result)
                self.log(f"done {job.id} in {time.monotonic() - started:.1f}s  {mappings.summary_line(result, 5)}")
        except LeaseLost as exc:
            run_status = "LOST"  # the run now belongs to the attempt that took the job over
            self.log(f"{exc}")
        except DatabaseUnavailable:
            # Whether this worker still holds the job is unknown: leave the run as it is (RUNNING);
            # the next attempt reopens it and writes the points since the last checkpoint again.
            run_status = "LOST"
            raise
        finally:
            heartbeat.detach()
            self._ctx = None
            if self.view is not None:
                self.view.remove(job)
            if run_status not in ("LOST", "CLOSED"):
                self._end_run(tracker, job, run_status)

    def _end_run(self, tracker: Any, job: ClaimedJob, status: str) -> None:
        try:
            tracker.end(status)
        except Exception as exc:
            self.log(f"tracking: could not close the run of {job.id}: {exc}")

    def _call(self, queue: Queue, job: ClaimedJob, ctx: JobContext, tracker: Any) -> tuple[Any, str | None, bool]:
        """Run the kind's function: (result, None, _) or (None, error text, retry?).

        LeaseLost and DatabaseUnavailable propagate: neither is the job's fault.
        """
        try:
            # `sweeper show` names the store next to the run id; the URI is masked before it is stored.
            open_job_run(
                tracker,
                queue,
                RunInfo(job.sweep, job.stage, job.id, job.kind, job.label, job.attempt, job.params),
                job.lease,
                job.tracking_run_id,
                mask_password(self.opts.settings.tracking_uri or ""),
            )
            recorded = self._recorded_result(job)
            if recorded is not None:
                return recorded, None, False
            fn = registry.load_run(job.kind)
            apply_torch_threads(self.opts.threads)  # the kind's module may have just imported torch
            result = fn(ctx, job.params)
            return (result if isinstance(result, Interrupted) else plain_result(result)), None, False
        except (LeaseLost, DatabaseUnavailable):
            raise
        except JobFailed as exc:
            return None, exc.message, exc.retry
        except (registry.KindError, UnsafePath, RefusedCheckpoint) as exc:  # none gets better on a retry
            return None, str(exc), False
        except Exception:
            if (down := self._heartbeat().db_down) is not None:
                raise down from None
            return None, traceback.format_exc(), True

    # Mirrored mode (mirror.py): the database on the mount lags the live one by up to a snapshot,
    # so a completion is also written to a file there first (recovery.py).

    def _recorded_result(self, job: ClaimedJob) -> dict[str, Any] | None:
        lineage = self.opts.mirror_lineage
        if not lineage:
            return None
        result = recorded_result(self.opts.settings.state_dir, lineage, job.sweep, job.id)
        if result is not None:
            self.log(
                f"job {job.id} finished in a session that ended before its next snapshot; "
                "recording the result it wrote instead of running it again"
            )
        return result

    def _record_result(self, queue: Queue, job: ClaimedJob, result: dict[str, Any]) -> None:
        lineage = self.opts.mirror_lineage
        if not lineage:
            return
        queue.verify_lease(job.lease)  # a zombie records nothing
        record_result(self.opts.settings.state_dir, lineage, job.sweep, job.id, job.attempt, result)

    def _record_failure(self, queue: Queue, job: ClaimedJob, error: str, *, retry: bool) -> None:
        try:
            status = queue.fail(job.lease, error, retry=retry)
        except LeaseLost as exc:
            self.log(f"{exc}")
            return
        self.log(f"job {job.id} raised: {error_summary(error) or 'an error'} -> {status}")


def plain_result(result: Any) -> dict[str, Any]:
    """Job results go into a JSON column: turn numpy/torch scalars into floats, NaN into None."""
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise JobFailed(f"a job must return a dict of metrics (or ctx.interrupted()), not {type(result).__name__}")

    def scalar(value: Any) -> Any:  # any leaf but a float: finite() has made NaN None already
        if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
            return value
        if hasattr(value, "item"):
            return mappings.finite(value.item(), key=str, leaf=scalar)
        return str(value)

    cleaned = mappings.finite(result, key=str, leaf=scalar)
    json.dumps(cleaned)
    return cleaned


def _stderr_line(line: str) -> None:
    # One write of the whole line: print() writes the text and its newline separately, and
    # several worker processes sharing a pipe then run their lines together.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# Several worker processes


def _child_main(opts: WorkerOptions, index: int) -> None:
    os.setpgrp()  # the terminal's Ctrl-C reaches the supervisor only; it forwards SIGTERM
    pin_gpu(opts.gpu)
    worker = Worker(opts, index=index)
    if opts.gpu is not None:
        worker.log(f"pinned to GPU {opts.gpu} (CUDA_VISIBLE_DEVICES)")
    # Several processes share the terminal: plain lines, each with its prefix.
    worker.view = make_view(worker.log, bar=False, every_s=opts.progress_every_s)
    sys.exit(worker.run())


def pin_gpu(gpu: str | None) -> None:
    """Before torch is imported: this process sees only its GPU, as cuda:0."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def failed_note(failed: list[str]) -> str:
    """The end of a worker's last line when jobs it could have run failed: how many, and how to see why."""
    if not failed:
        return ""
    return (
        f"; {len(failed)} job(s) failed: `sweeper status` lists them, "
        f"`sweeper show {failed[0]}` says why, `sweeper retry --failed` runs them again"
    )


def run_workers(opts: WorkerOptions) -> int:
    """Run the planned worker processes (in this process when it is one). Returns an exit code.

    The plan (workerplan.py) is the first line printed: how many workers, threads, which GPUs.
    """
    plan = plan_here(opts.workers, opts.threads_per_worker, opts.jobs_per_gpu)
    _stderr_line(plan.describe())
    opts = replace(opts, workers=plan.workers, threads_per_worker=plan.threads)
    if plan.workers <= 1:
        opts = replace(opts, gpu=plan.gpu_of(0))
        pin_gpu(opts.gpu)
        worker = Worker(opts)
        worker.view = make_view(worker.log, bar=True, every_s=opts.progress_every_s)
        try:
            return worker.run()
        finally:
            if worker.view is not None:
                worker.view.close()
    code = _open_once(opts)
    return code if code is not None else _supervise(opts, plan)


def _open_once(opts: WorkerOptions) -> int | None:
    """Open the queue before starting the worker processes: a URL that cannot work (a host that
    does not resolve, a missing database, a refused login) is one error here, not one per worker,
    and an outage at start is waited out (with its lines) once. Returns an exit code, or None."""

    def log(line: str) -> None:
        _stderr_line(f"{time.strftime('%H:%M:%S')} {mask_password(line)}")

    try:
        db = open_database(opts.settings.db_url, create=True, outage=OutagePolicy(limit_s=opts.db_outage_s, log=log))
    except SweeperError as exc:
        log(str(exc))
        return exc.exit_code
    db.dispose()
    return None


def _supervise(opts: WorkerOptions, plan: WorkerPlan) -> int:
    mp = multiprocessing.get_context("spawn")
    procs = [
        mp.Process(target=_child_main, args=(replace(opts, gpu=plan.gpu_of(i)), i), name=f"sweeper-worker-{i}")
        for i in range(plan.workers)
    ]
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stopping.is_set():
            _stderr_line("second signal: killing the workers now")
            for p in procs:
                if p.pid and p.is_alive():
                    os.kill(p.pid, signal.SIGKILL)
            os._exit(130)
        stopping.set()
        _stderr_line(
            f"{signal.Signals(signum).name}: asking {len(procs)} workers to checkpoint and stop; "
            "send it again to exit at once"
        )
        for p in procs:
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for p in procs:
        p.start()
    for p in procs:
        while p.is_alive():
            p.join(timeout=0.5)
    return _exit_code(procs)


def _exit_code(procs: list[Any]) -> int:
    """The worst child's exit code. A child killed by a signal (exit code -N: kill -9, the kernel's
    out-of-memory killer) is named with its signal and counts as 128 + N, as a shell reports it."""
    worst = 0
    for i, p in enumerate(procs):
        code = p.exitcode
        if code is None or code == 0:
            continue
        if code > 0:
            worst = max(worst, code)
            continue
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (out of memory? the kernel's OOM killer sends SIGKILL: see `dmesg`)" if -code == signal.SIGKILL else ""
        _stderr_line(
            f"worker {i} (pid {p.pid}) died of {name}{why}; its job resumes from its last checkpoint "
            "when its lease runs out"
        )
        worst = max(worst, 128 - code)
    return worst
