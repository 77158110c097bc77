"""The chaos monkey: seeded faults against real worker processes and a real database.

At random moments (drawn from a seeded RNG) it SIGKILLs a worker, SIGSTOPs one past its lease and
SIGCONTs it later, sends SIGTERM, cuts the database (PostgreSQL restart or pg_terminate_backend; a
held write lock on SQLite), and starts replacement workers for the ones that died.

Look before you strike. A queue can make its own writes exactly-once (fencing), but not a side
effect outside the database that a job performs after its last fenced write: the no-op kind's
counter file, the artifacts and MLflow points a job writes after its final checkpoint. A worker
killed or frozen between such a side effect and the completion that records it repeats the side
effect on the next attempt; no queue can prevent that without two-phase commit. So before a
SIGKILL or a SIGSTOP the monkey freezes the target (SIGSTOP is instantaneous and race-free), asks
`Inspector` whether it is inside such a window, and if so lets it go (SIGCONT) and strikes later.
It also does not freeze a SQLite worker that holds the write lock: every other worker would wait
on it. Each such deferral is counted in the report; everything else is fair game.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

WORKER_FAULTS = ("sigkill", "sigstop", "sigterm")


@dataclass
class WorkerProc:
    index: int
    popen: subprocess.Popen
    log: Path
    started: float  # monotonic
    stopped_until: float | None = None  # frozen by the monkey until then (monotonic)
    terminating: bool = False  # SIGTERM sent; it checkpoints, releases and exits
    killed: bool = False
    exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.exit_code is None


@dataclass
class Fault:
    kind: str
    at_s: float  # seconds since the monkey started
    wall: float  # time.time(), comparable with the queue's event timestamps
    pid: int | None = None
    job: str | None = None
    attempt: int | None = None
    detail: str = ""


class Pool:
    """The worker processes of one chaos run. Only processes started here are ever signalled."""

    def __init__(self, start: Callable[[Path], subprocess.Popen], log_dir: Path) -> None:
        self._start = start
        self.log_dir = log_dir
        self.procs: list[WorkerProc] = []

    def start(self) -> WorkerProc:
        log = self.log_dir / f"worker-{len(self.procs):03d}.log"
        proc = WorkerProc(len(self.procs), self._start(log), log, time.monotonic())
        self.procs.append(proc)
        return proc

    def poll(self) -> list[WorkerProc]:
        """Record exits; returns the workers that ended since the last call."""
        ended = []
        for p in self.procs:
            if p.exit_code is None:
                code = p.popen.poll()
                if code is not None:
                    p.exit_code = code
                    ended.append(p)
        return ended

    def alive(self) -> list[WorkerProc]:
        return [p for p in self.procs if p.alive]

    def strikable(self) -> list[WorkerProc]:
        return [p for p in self.alive() if p.stopped_until is None and not p.terminating and not p.killed]

    def stopped(self) -> list[WorkerProc]:
        return [p for p in self.alive() if p.stopped_until is not None]


class Inspector(Protocol):
    """What the monkey may ask about the queue (see harness.QueueInspector)."""

    def job_of(self, pid: int) -> dict[str, Any] | None: ...

    def busy_pids(self) -> set[int]: ...

    def unsafe_window(self, job: dict[str, Any], fault: str) -> str | None: ...

    def holds_sqlite_lock(self) -> bool: ...


class DatabaseFaults(Protocol):
    kinds: tuple[str, ...]

    def inject(self, kind: str, rng: random.Random) -> str: ...


class PostgresFaults:
    kinds = ("pg_restart", "pg_terminate")

    def __init__(self, url: str) -> None:
        self.url = url
        self.restart_s: list[float] = []

    def inject(self, kind: str, rng: random.Random) -> str:
        from . import pg

        if kind == "pg_restart":
            took = pg.restart(self.url)
            self.restart_s.append(took)
            return f"restarted in {took:.1f}s"
        return f"terminated {pg.terminate_backends(self.url)} connection(s)"


class SqliteFaults:
    """A writer that holds SQLite's write lock for a while (as a frozen process would)."""

    kinds = ("sqlite_lock",)

    def __init__(self, path: Path, max_hold_s: float) -> None:
        self.path = path
        self.max_hold_s = max_hold_s

    def inject(self, kind: str, rng: random.Random) -> str:
        hold = rng.uniform(0.2, self.max_hold_s)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            time.sleep(hold)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return f"held the write lock for {hold:.1f}s"


@dataclass
class MonkeyConfig:
    lease_ttl_s: float
    mean_interval_s: float = 1.5
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "sigkill": 2.0,
            "sigstop": 2.0,
            "sigterm": 1.0,
            "pg_restart": 1.5,
            "pg_terminate": 2.5,
            "sqlite_lock": 4.0,
        }
    )
    workers: int = 3
    replace_delay_s: tuple[float, float] = (0.2, 2.0)
    stop_extra_s: tuple[float, float] = (1.5, 3.5)  # a SIGSTOP lasts the lease plus this much


class Monkey:
    def __init__(
        self,
        seed: int,
        pool: Pool,
        inspector: Inspector,
        db_faults: DatabaseFaults,
        config: MonkeyConfig,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.pool = pool
        self.inspector = inspector
        self.db_faults = db_faults
        self.config = config
        self.log = log
        self.faults: list[Fault] = []
        self.deferred: Counter[str] = Counter()
        self.replacements = 0
        self._t0 = time.monotonic()
        self._next_fault = self._t0 + self._interval()
        self._replace_at: list[float] = []
        # Every kind of fault strikes at least once, early and in a seeded order; then by weight.
        self._unseen = [k for k in (*WORKER_FAULTS, *db_faults.kinds) if config.weights.get(k, 0) > 0]
        self.rng.shuffle(self._unseen)

    # -- bookkeeping -----------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _interval(self) -> float:
        return self.rng.expovariate(1.0 / self.config.mean_interval_s)

    def _record(self, kind: str, proc: WorkerProc | None = None, job: dict | None = None, detail: str = "") -> None:
        fault = Fault(
            kind,
            round(self.elapsed(), 2),
            time.time(),
            proc.pid if proc else None,
            job["id"] if job else None,
            job["attempt"] if job else None,
            detail,
        )
        self.faults.append(fault)
        if kind in self._unseen:
            self._unseen.remove(kind)
        self.log(f"[{fault.at_s:7.2f}s] {kind:<12} pid={fault.pid} job={fault.job} {detail}")

    def counts(self) -> Counter[str]:
        return Counter(f.kind for f in self.faults)

    # -- the loop --------------------------------------------------------------------------

    def start_workers(self) -> None:
        for _ in range(self.config.workers):
            self.pool.start()

    def total(self) -> int:
        return len(self.faults)

    def tick(self, *, active: bool, strike: bool = True) -> None:
        """One turn: wake frozen workers that served their time, replace dead ones, maybe strike.

        `active` says whether the queue still has work; once it has none, only wake-ups happen.
        `strike` False: keep the pool going but inject nothing more (the fault budget is spent).
        """
        now = time.monotonic()
        for p in self.pool.stopped():
            if now >= (p.stopped_until or 0):
                self._cont(p)
        self.pool.poll()
        if active:
            # A worker told to stop (SIGTERM) is replaced at once, as a new session would be.
            serving = [p for p in self.pool.alive() if not p.terminating]
            while len(serving) + len(self._replace_at) < self.config.workers:
                self._replace_at.append(now + self.rng.uniform(*self.config.replace_delay_s))
            due = [t for t in self._replace_at if t <= now]
            self._replace_at = [t for t in self._replace_at if t > now]
            for _ in due:
                proc = self.pool.start()
                self.replacements += 1
                self.log(f"[{self.elapsed():7.2f}s] replacement  pid={proc.pid}")
        if active and strike and now >= self._next_fault:
            self._strike()
            self._next_fault = time.monotonic() + self._interval()

    def release_all(self) -> None:
        """SIGCONT every worker the monkey froze (the end of a run, or a failing test)."""
        for p in self.pool.stopped():
            self._cont(p)

    def _cont(self, p: WorkerProc) -> None:
        p.stopped_until = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)
        self.log(f"[{self.elapsed():7.2f}s] sigcont      pid={p.pid}")

    # -- faults ----------------------------------------------------------------------------

    def _choose(self) -> str:
        kinds = [k for k in (*WORKER_FAULTS, *self.db_faults.kinds) if self.config.weights.get(k, 0) > 0]
        if self.pool.stopped():  # one frozen worker at a time, or the sweep crawls
            kinds = [k for k in kinds if k != "sigstop"]
        first = [k for k in self._unseen if k in kinds]
        if first:
            return first[0]
        return self.rng.choices(kinds, weights=[self.config.weights[k] for k in kinds])[0]

    def _strike(self) -> None:
        kind = self._choose()
        if kind not in WORKER_FAULTS:
            detail = self.db_faults.inject(kind, self.rng)
            self._record(kind, detail=detail)
            return
        # Worker faults go to workers that hold a job: killing one that is still importing torch
        # costs a restart and proves nothing the others do not.
        busy = self.inspector.busy_pids()
        targets = [p for p in self.pool.strikable() if p.pid in busy]
        if not targets:
            self._next_fault = time.monotonic() + 0.2
            return
        proc = self.rng.choice(targets)
        if kind == "sigterm":
            job = self.inspector.job_of(proc.pid)
            if _signal(proc, signal.SIGTERM):
                proc.terminating = True
                self._record(kind, proc, job)
            return
        # SIGKILL / SIGSTOP: freeze, look, then strike or let go.
        if not _signal(proc, signal.SIGSTOP):
            return
        if not _wait_stopped(proc.pid):
            _signal(proc, signal.SIGCONT)
            return
        job = self.inspector.job_of(proc.pid)
        why = self.inspector.unsafe_window(job, kind) if job else "finished its job before the strike"
        if why is None and kind == "sigstop" and self.inspector.holds_sqlite_lock():
            why = "holds the SQLite write lock"
        if why is not None:
            self.deferred[f"{kind}: {why}"] += 1
            _signal(proc, signal.SIGCONT)
            self._next_fault = time.monotonic() + 0.2
            return
        if kind == "sigkill":
            _signal(proc, signal.SIGKILL)
            proc.killed = True
            self._record(kind, proc, job)
        else:
            hold = self.config.lease_ttl_s + self.rng.uniform(*self.config.stop_extra_s)
            proc.stopped_until = time.monotonic() + hold
            self._record(kind, proc, job, f"frozen for {hold:.1f}s")


def _signal(proc: WorkerProc, sig: signal.Signals) -> bool:
    if proc.popen.poll() is not None:
        return False
    try:
        os.kill(proc.pid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_stopped(pid: int, timeout: float = 2.0) -> bool:
    """Wait until the kernel reports the process as stopped (state T in /proc/PID/stat)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rsplit(")", 1)[1].split()[0] in ("T", "t"):
            return True
        time.sleep(0.002)
    return False
