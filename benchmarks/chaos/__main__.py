"""Chaos soak: a sweep that keeps growing while a seeded monkey kills, freezes and signals its
workers and cuts the database, for --minutes N; then every invariant of the chaos test is checked.

    python -m benchmarks.chaos --minutes 15 --backend postgres
    python -m benchmarks.chaos --minutes 15 --backend sqlite

Baseline, measured in the same run: the same sweep on the same backend with the monkey asleep for
--baseline-minutes; the soak reports its throughput as a ratio of that one. Writes
benchmarks/results/chaos_soak_<backend>.json and prints the summary.

PostgreSQL: the soak restarts the server it runs against (pg_ctlcluster ... restart) every few
seconds. By default it creates a database on SWEEPER_TEST_PG_URL (the local test server); point
--db at a private cluster if others share that server (the cluster is found by port).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.chaos import pg  # noqa: E402
from tests.chaos.harness import ChaosConfig, CleanRuns, run_chaos  # noqa: E402

DEFAULT_PG = os.environ.get("SWEEPER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, required=True, help="how long the monkey strikes")
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--db", help="PostgreSQL server URL to create the soak's database on [SWEEPER_TEST_PG_URL]")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--fault-interval", type=float, default=3.0, help="mean seconds between faults")
    ap.add_argument("--lease-ttl", type=float, default=8.0)
    ap.add_argument("--baseline-minutes", type=float, default=2.0, help="the same sweep without faults (0: skip)")
    ap.add_argument("--workdir", type=Path, help="keep state, logs and the monkey's log here")
    ap.add_argument("--out", type=Path, help="JSON file [benchmarks/results/chaos_soak_<backend>.json]")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sweeper-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or REPO / "benchmarks" / "results" / f"chaos_soak_{args.backend}.json"
    monkey_log = open(work / "monkey.log", "a")  # noqa: SIM115  (open for the whole run)

    def log(line: str) -> None:
        monkey_log.write(line + "\n")
        monkey_log.flush()

    clean = CleanRuns(work / "clean")
    load_before = os.getloadavg()
    runs = {}
    phases = [("baseline", args.baseline_minutes, 0), ("soak", args.minutes, None)]
    for phase, minutes, max_faults in phases:
        if minutes <= 0:
            continue
        with database(args.backend, args.db, work / phase) as url:
            cfg = ChaosConfig(
                backend=args.backend,
                db_url=url,
                workdir=work / phase,
                seed=args.seed,
                workers=args.workers,
                lease_ttl_s=args.lease_ttl,
                mean_interval_s=args.fault_interval,
                min_faults=0 if max_faults == 0 else 20,
                max_faults=max_faults,
                soak_s=minutes * 60,
                max_s=minutes * 60 + 900,
                wave_noop_jobs=12,
                wave_train_seeds=1,
                cache_dir=work / "cache",
                log=log,
            )
            print(f"{phase}: {minutes:g} min on {args.backend} (logs in {work / phase})", flush=True)
            report = run_chaos(cfg, clean)
        runs[phase] = report
        print(report.summary(), flush=True)

    soak = runs["soak"]
    s = soak.stats
    result = {
        "benchmark": "chaos_soak",
        "command": " ".join(["python -m benchmarks.chaos", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "shared": True,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "note": "2-core machine shared with other engineers' test runs; throughput is a ratio against "
        "the fault-free baseline run in the same invocation",
        "backend": args.backend,
        "seed": args.seed,
        "minutes": args.minutes,
        "faults_by_type": soak.faults,
        "faults_injected": soak.total_faults,
        "faults_survived": soak.total_faults if not soak.violations else None,
        "strikes_deferred": soak.deferred,
        "jobs": s["jobs"],
        "jobs_completed": s["done"],
        "jobs_failed_as_designed": s["failed"],
        "duplicates": s["duplicates"],
        "lost_jobs": s["lost_jobs"],
        "reclaims": s["reclaims"],
        "interruptions": s["interruptions"],
        "kills_of_running_jobs": s["kills_on_jobs"],
        "lost_compute_s": round(s["lost_compute_s"], 2),
        "mean_lost_compute_per_kill_s": round(s["mean_lost_per_kill_s"], 3),
        "max_lost_compute_per_kill_s": round(s["max_lost_per_kill_s"], 3),
        "worker_starts": soak.worker_starts,
        "waves": soak.waves,
        "pg_restart_s": soak.pg_restart_s,
        "duration_s": round(soak.duration_s, 1),
        "violations": soak.violations,
        "runs": {name: r.to_json() for name, r in runs.items()},
    }
    base = runs.get("baseline")
    if base is not None:
        rate = lambda r: r.stats["done"] / r.duration_s * 60  # noqa: E731
        result["baseline"] = {"jobs_completed": base.stats["done"], "duration_s": round(base.duration_s, 1)}
        result["jobs_per_min"] = {"baseline": round(rate(base), 2), "soak": round(rate(soak), 2)}
        result["throughput_ratio_vs_baseline"] = round(rate(soak) / rate(base), 3)
        if base.violations:
            result["baseline_violations"] = base.violations
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if not soak.violations and not (base and base.violations) else 1


class database:
    """A fresh queue: a SQLite file in the phase's directory, or a new PostgreSQL database (dropped
    after, with the MLflow database the workers make next to it)."""

    def __init__(self, backend: str, server: str | None, work: Path) -> None:
        self.backend, self.server, self.work = backend, server or DEFAULT_PG, work
        self.name: str | None = None

    def __enter__(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.work / 'state' / 'queue.db'}"
        self.name = f"sweeper_soak_{secrets.token_hex(4)}"
        with self._admin() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        return sa.make_url(self.server).set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *exc: object) -> None:
        if self.name is None:
            return
        pg.ensure_running(self.server)
        with self._admin() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            # the workers' default MLflow store next to the queue (config.default_tracking_uri)
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}_mlflow" WITH (FORCE)'))

    def _admin(self):
        url = sa.make_url(self.server)
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        return _Closing(engine)


class _Closing:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def __enter__(self) -> sa.Connection:
        self.conn = self.engine.connect()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()
        self.engine.dispose()


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({(time.monotonic() - started) / 60:.1f} min in all)")
    sys.exit(code)
