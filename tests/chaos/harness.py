"""One chaos run: enqueue a sweep, start workers, let the monkey loose, then check the invariants.

The sweep mixes small `train` jobs on synthetic data (MLflow tracking on, final weights compared
bit for bit with a clean run) with `noop` jobs whose counter file proves each ran to the end once,
a job that fails once then succeeds, a poison job, and a dependent stage. When the queue runs low
before the run has seen enough faults (or, in a soak, before its time is up), the grid file is
extended and enqueued again, as a user adds configurations while workers run.

Each enqueue also settles every stage, so new waves would free a dependent stage left blocked by
a lost settle (issue 10). With `waves=False` the grid is enqueued once and never again: the
dependent stages must unblock by themselves, or the `--wait` workers never exit and the run fails.

Used by tests/chaos/test_chaos.py (CI) and benchmarks/chaos (soak).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sweeper.config import default_tracking_uri, normalize_db_url
from sweeper.running.tracking import prepare_postgres_store

from . import invariants
from .monkey import Monkey, MonkeyConfig, Pool, PostgresFaults, SqliteFaults

REPO = Path(__file__).resolve().parents[2]
SWEEP = "chaos"

TRAIN_PARAMS: dict[str, Any] = {
    "dataset": "synthetic",
    "train_subset": 1500,
    "test_subset": 300,
    "max_epochs": 2,
    "batch_size": 32,
    "conv1": {"channels": 4, "kernel": 3},
    "conv2": {"channels": 8, "kernel": 3},
    "dense": 32,
    "checkpoint_every_s": 0.25,
    "log_every": 10,
    "eval_batch_size": 300,
    "target_train_acc": 0.5,
    "target_window": 300,
}


@dataclass
class ChaosConfig:
    backend: str  # sqlite | postgres
    db_url: str
    workdir: Path
    seed: int = 0
    workers: int = 3
    lease_ttl_s: float = 8.0
    mean_interval_s: float = 1.5
    min_faults: int = 20
    max_faults: int | None = 24  # then the sweep drains in peace (None: faults until the end, a soak)
    soak_s: float | None = None  # keep adding work until this many seconds have passed
    max_s: float = 300.0  # hard bound on the whole run
    noop_jobs: int = 16
    wave_noop_jobs: int = 8
    noop_steps: int = 6
    noop_step_s: float = 0.3
    train_lrs: tuple[float, ...] = (0.01, 0.05)
    train_seeds: int = 1
    wave_train_seeds: int = 0  # train seeds added per extra wave
    waves: bool = True  # False: never enqueue again (nothing re-runs the settle behind the workers)
    dependents: int = 2  # jobs of the `after` stage, which needs all of `noop`
    weights: dict[str, float] | None = None
    cache_dir: Path | None = None  # where the empty MLflow store template is kept between runs
    log: Callable[[str], None] = field(default=lambda line: None, repr=False)


@dataclass
class ChaosReport:
    backend: str
    seed: int
    duration_s: float
    faults: dict[str, int]
    fault_log: list[dict[str, Any]]
    deferred: dict[str, int]
    replacements: int
    worker_starts: int
    waves: int
    stats: dict[str, Any]
    violations: list[str]
    pg_restart_s: list[float] = field(default_factory=list)

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def summary(self) -> str:
        s = self.stats
        lines = [
            f"chaos [{self.backend}] seed {self.seed}: {self.total_faults} faults in {self.duration_s:.0f}s "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.faults.items()))})",
            f"  jobs: {s['jobs']} ({s['done']} done, {s['failed']} failed as designed), waves {self.waves}, "
            f"duplicates {s['duplicates']}, lost jobs {s['lost_jobs']}",
            f"  workers started {self.worker_starts} ({self.replacements} replacements); re-claims "
            f"{s['reclaims']}; interruptions {s['interruptions']}",
            f"  lost compute: {s['lost_compute_s']:.1f}s over {s['kills_on_jobs']} kills of running jobs "
            f"(mean {s['mean_lost_per_kill_s']:.2f}s per kill)",
        ]
        if self.pg_restart_s:
            lines.append(f"  PostgreSQL restarts took {', '.join(f'{t:.1f}s' for t in self.pg_restart_s)}")
        if self.deferred:
            lines.append(
                "  strikes deferred (target inside an unfenceable window): "
                + ", ".join(f"{k} x{v}" for k, v in sorted(self.deferred.items()))
            )
        lines.append("  invariants: " + ("all hold" if not self.violations else f"{len(self.violations)} VIOLATED"))
        lines += [f"    - {v}" for v in self.violations[:30]]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_faults"] = self.total_faults
        return data


# ---------------------------------------------------------------------------------------------
# The sweep


def grid_text(cfg: ChaosConfig, wave: int, counter: Path) -> str:
    """The grid file after `wave` extensions (wave 0 is the first enqueue)."""
    noop_n = cfg.noop_jobs + wave * cfg.wave_noop_jobs
    seeds = cfg.train_seeds + wave * cfg.wave_train_seeds
    train = json.dumps(TRAIN_PARAMS)
    noop = json.dumps({"steps": cfg.noop_steps, "step_s": cfg.noop_step_s, "counter_dir": str(counter)})
    return textwrap.dedent(
        f"""\
        sweep: {SWEEP}
        stages:
          train:
            kind: train
            params: {train}
            grid: {{lr: {list(cfg.train_lrs)}, seed: {list(range(seeds))}}}
          noop:
            kind: noop
            params: {noop}
            grid: {{value: {list(range(noop_n))}}}
          flaky:
            kind: noop
            params: {{fail_times: 1, steps: 3, step_s: 0.1, counter_dir: "{counter}"}}
            max_failures: 3
          poison:
            kind: noop
            params: {{fail: true, checkpoint: false}}
            max_failures: 2
          after:
            kind: noop
            needs: [noop]
            params: {{steps: 2, step_s: 0.1, counter_dir: "{counter}"}}
            grid: {{value: {list(range(cfg.dependents))}}}
        """
    )


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("SWEEPER_DB", "SWEEPER_STATE", "MLFLOW_TRACKING_URI", "SWEEPER_MIRROR"):
        env.pop(var, None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env


def sweeper(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweeper.cli", *args], env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def mlflow_template(cache: Path) -> Path:
    """An empty, initialized MLflow SQLite store, made once and copied into each run's state.

    Creating the store runs MLflow's schema migrations (many seconds); it is not what the chaos
    run tests.
    """
    path = cache / "mlflow-template.db"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"mlflow-template.{os.getpid()}.db"
        code = (
            "import sys\nfrom mlflow.tracking import MlflowClient\n"
            "MlflowClient(tracking_uri='sqlite:///' + sys.argv[1]).search_experiments(max_results=1)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp)], env=cli_env(), capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            raise RuntimeError(f"could not create an MLflow store: {proc.stderr[-2000:]}")
        os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# What the monkey may ask about the queue


class QueueInspector:
    def __init__(self, db_url: str, state: Path, counter: Path) -> None:
        self.db_url = db_url
        self.state = state
        self.counter = counter
        self.engine = sa.create_engine(
            sa.make_url(db_url).set(drivername="postgresql+psycopg") if db_url.startswith("postgresql") else db_url,
            pool_pre_ping=True,
            poolclass=sa.pool.NullPool,
        )
        self.sqlite_path = Path(sa.make_url(db_url).database) if db_url.startswith("sqlite") else None

    def _rows(self, sql: str, **params: Any) -> list[sa.Row]:
        last: Exception | None = None
        for _ in range(50):  # the database may be restarting
            try:
                with self.engine.connect() as conn:
                    return conn.execute(sa.text(sql), params).all()
            except sa.exc.OperationalError as exc:
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"chaos inspector cannot read the queue: {last}")

    def active(self) -> int:
        return self._rows("SELECT count(*) FROM jobs WHERE status IN ('blocked', 'pending', 'running')")[0][0]

    def busy_pids(self) -> set[int]:
        rows = self._rows("SELECT lease_owner FROM jobs WHERE status = 'running' AND lease_owner IS NOT NULL")
        return {int(r[0].split(":")[1]) for r in rows}

    def job_of(self, pid: int) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT id, kind, attempt, params FROM jobs WHERE status = 'running' AND lease_owner LIKE :pat",
            pat=f"%:{pid}:%",
        )
        if not rows:
            return None
        r = rows[0]
        params = r.params if isinstance(r.params, dict) else json.loads(r.params)
        return {"id": r.id, "kind": r.kind, "attempt": r.attempt, "params": params}

    def newest_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT location, blob FROM checkpoints WHERE job_id = :j ORDER BY seq DESC LIMIT 1", j=job_id
        )
        if not rows:
            return None
        location, blob = rows[0]
        try:
            data = (self.state / location).read_bytes() if location else bytes(blob)
            import torch

            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception:
            return None

    def unsafe_window(self, job: dict[str, Any], fault: str) -> str | None:
        params = job["params"]
        if job["kind"] == "noop":
            if (self.counter / job["id"]).exists():
                return "noop side effect written, completion not yet recorded"
            state = self.newest_checkpoint(job["id"]) if fault == "sigstop" else None
            if state is not None and state.get("step", 0) >= params.get("steps", 1):
                return "noop past its last checkpoint"
        if job["kind"] == "train" and fault == "sigstop":
            state = self.newest_checkpoint(job["id"])
            if state is not None and state.get("epoch", 0) >= params.get("max_epochs", 15):
                return "train job past its final checkpoint"
        return None

    def holds_sqlite_lock(self) -> bool:
        """True when nobody else can take SQLite's write lock (the frozen worker holds it)."""
        if self.sqlite_path is None:
            return False
        for _ in range(4):
            conn = sqlite3.connect(self.sqlite_path, timeout=0.25, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:
                pass
            finally:
                conn.close()
        return True

    def dispose(self) -> None:
        self.engine.dispose()


# ---------------------------------------------------------------------------------------------
# The run


class CleanRuns:
    """Clean (fault-free) runs of train configurations, made on demand and kept for the session."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.refs: invariants.References = {}
        self.runs = 0

    def __call__(self, params_list: list[dict[str, Any]]) -> invariants.References:
        missing = [p for p in params_list if invariants.params_key(p) not in self.refs]
        if missing:
            self.runs += 1
            self.refs.update(invariants.clean_run(missing, self.workdir / f"clean-{self.runs}", cli_env()))
        return self.refs


def train_params(db_url: str) -> list[dict[str, Any]]:
    engine = invariants.engine_for(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT params FROM jobs WHERE kind = 'train' AND status = 'done'")).all()
    finally:
        engine.dispose()
    return [invariants._json(r[0]) for r in rows]


def run_chaos(cfg: ChaosConfig, clean: Callable[[list[dict[str, Any]]], invariants.References]) -> ChaosReport:
    log = cfg.log
    work = cfg.workdir
    state = work / "state"
    counter = work / "counter"
    logs = work / "logs"
    for d in (state, counter, logs):
        d.mkdir(parents=True, exist_ok=True)
    # The workers get no --mlflow-uri: their store is the default one, <state>/mlflow.db next to a
    # SQLite queue, the database <queuedb>_mlflow on a PostgreSQL queue's server (the store every
    # machine of a sweep shares). It is made before the monkey starts, as creating it (MLflow's
    # schema migrations, many seconds) is not what the chaos run tests.
    tracking_uri = default_tracking_uri(state, cfg.db_url)
    if cfg.backend == "postgres":
        prepare_postgres_store(tracking_uri, create_from=normalize_db_url(cfg.db_url))
    else:
        shutil.copy(mlflow_template(cfg.cache_dir or work.parent / ".chaos-cache"), state / "mlflow.db")
    grid = work / "grid.yaml"

    def enqueue(wave: int) -> None:
        grid.write_text(grid_text(cfg, wave, counter))
        proc = sweeper("enqueue", str(grid), "--state", str(state), "--db", cfg.db_url)
        if proc.returncode != 0:
            raise RuntimeError(f"enqueue of wave {wave} failed: {proc.stderr}")
        log(f"wave {wave}: {proc.stdout.splitlines()[0] if proc.stdout else ''}")

    enqueue(0)
    again = sweeper("enqueue", str(grid), "--state", str(state), "--db", cfg.db_url)
    idempotent = again.returncode == 0 and "added 0 new job(s)" in again.stdout

    def start(log_path: Path) -> subprocess.Popen:
        out = open(log_path, "ab")  # noqa: SIM115  (owned by the process)
        args = ["--state", str(state), "--db", cfg.db_url, "--lease-ttl", str(cfg.lease_ttl_s)]
        args += ["--retry-backoff", "0.5", "--db-outage-limit", "90", "--wait", "--poll", "0.2"]
        args += ["--workers", "1", "--threads-per-worker", "1"]  # the monkey signals this pid: one worker
        return subprocess.Popen(
            [sys.executable, "-m", "sweeper.cli", "work", *args],
            env=cli_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    inspector = QueueInspector(cfg.db_url, state, counter)
    if cfg.backend == "postgres":
        db_faults: Any = PostgresFaults(cfg.db_url)
    else:
        db_faults = SqliteFaults(Path(sa.make_url(cfg.db_url).database), max_hold_s=cfg.lease_ttl_s * 0.2)
    mcfg = MonkeyConfig(lease_ttl_s=cfg.lease_ttl_s, mean_interval_s=cfg.mean_interval_s, workers=cfg.workers)
    if cfg.weights:
        mcfg.weights.update(cfg.weights)
    pool = Pool(start, logs)
    monkey = Monkey(cfg.seed, pool, inspector, db_faults, mcfg, log=log)
    t0 = time.monotonic()
    wave = 0
    problems: list[str] = []
    try:
        monkey.start_workers()
        last_check, active = 0.0, 1
        while True:
            now = time.monotonic()
            if now - t0 > cfg.max_s:
                problems.append(f"the run did not finish within {cfg.max_s:.0f}s ({active} jobs still active)")
                break
            if now - last_check >= 0.5:
                active = inspector.active()
                last_check = now
                want_more = monkey.total() < cfg.min_faults or (cfg.soak_s is not None and now - t0 < cfg.soak_s)
                if cfg.waves and want_more and active <= cfg.workers * 2:
                    wave += 1
                    enqueue(wave)
                    active = inspector.active()
                if active == 0:
                    break
            monkey.tick(active=True, strike=cfg.max_faults is None or monkey.total() < cfg.max_faults)
            time.sleep(0.05)
        monkey.release_all()
        problems += _wait_for_exit(pool, timeout=90)
    finally:
        monkey.release_all()
        for p in pool.alive():
            with contextlib.suppress(ProcessLookupError):
                p.popen.kill()
            p.popen.wait(timeout=30)
        inspector.dispose()
    duration = time.monotonic() - t0
    if not idempotent:
        problems.append(f"enqueueing the same grid again added jobs or failed: {again.stdout} {again.stderr}")

    found = invariants.check(
        invariants.RunFiles(
            db_url=cfg.db_url, state=state, counter=counter, logs=logs, sweep=SWEEP, tracking_uri=tracking_uri
        ),
        pool.procs,
        monkey.faults,
        clean(train_params(cfg.db_url)),
    )
    return ChaosReport(
        backend=cfg.backend,
        seed=cfg.seed,
        duration_s=duration,
        faults=dict(monkey.counts()),
        fault_log=[asdict(f) for f in monkey.faults],
        deferred=dict(monkey.deferred),
        replacements=monkey.replacements,
        worker_starts=len(pool.procs),
        waves=wave + 1,
        stats=found.stats,
        violations=problems + found.violations,
        pg_restart_s=list(getattr(db_faults, "restart_s", [])),
    )


def _wait_for_exit(pool: Pool, timeout: float) -> list[str]:
    """Workers leave by themselves once the queue is finished; a worker that does not is a bug."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pool.alive():
        pool.poll()
        time.sleep(0.1)
    stuck = pool.alive()
    for p in stuck:
        p.popen.terminate()
    return [f"worker pid {p.pid} did not exit within {timeout:.0f}s of the queue finishing" for p in stuck]
