"""What must hold after a chaos run, checked on the real queue, files and MLflow store.

- every job is done exactly once: one result and one `done` event per job, and one line in the
  no-op kind's counter file, written by the attempt whose result was recorded;
- no job is left running, pending or blocked, and no lease is left behind;
- failures and interruptions stay within their limits: the poison job fails after exactly its
  max_failures, the flaky job fails at most once, and no fault ever counts as a failure;
- MLflow: one run per job (the one the queue recorded), no metric step logged twice, and every
  step of every no-op job logged;
- every train job's final weights (the model.pt artifact, verified by sha256) are bit-identical
  to those of a clean run of the same configuration, and so are its test metrics;
- workers exit 0 unless the monkey killed them, and none prints a traceback;
- the SQLite file passes PRAGMA integrity_check.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sweeper.config import default_tracking_uri, mask_password

TIME_METRICS = ("time_to_target_s", "total_train_s", "images_per_s", "eval_s", "checkpoint_s")


@dataclass
class RunFiles:
    db_url: str
    state: Path
    counter: Path
    logs: Path
    sweep: str
    tracking_uri: str | None = None  # None: the store workers use by default (config.default_tracking_uri)

    def mlflow_store(self) -> str:
        return self.tracking_uri or default_tracking_uri(self.state, self.db_url)


@dataclass
class Reference:
    """A train configuration's outcome in a clean run (no faults)."""

    weights: dict[str, Any]
    result: dict[str, Any]


References = dict[str, Reference]  # canonical params JSON -> outcome


@dataclass
class Findings:
    violations: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def engine_for(url: str) -> sa.Engine:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def check(files: RunFiles, procs: list[Any], faults: list[Any], reference: References) -> Findings:
    out = Findings()
    engine = engine_for(files.db_url)
    try:
        with engine.connect() as conn:
            jobs = [
                dict(r._mapping)
                for r in conn.execute(sa.text("SELECT * FROM jobs WHERE sweep = :s"), {"s": files.sweep})
            ]
            events = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM events ORDER BY id"))]
            artifacts = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM artifacts"))]
    finally:
        engine.dispose()
    for j in jobs:
        for key in ("params", "result"):
            j[key] = _json(j[key])
    duplicates = _check_jobs(out, jobs, events)
    lost, dup_counter = _check_counters(out, jobs, files.counter)
    dup_metrics = _check_mlflow(out, jobs, files.mlflow_store())
    _check_weights(out, jobs, artifacts, files.state, reference)
    _check_workers(out, procs)
    if files.db_url.startswith("sqlite"):
        conn = sqlite3.connect(sa.make_url(files.db_url).database)
        try:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
        if verdict != "ok":
            out.violations.append(f"SQLite integrity_check: {verdict}")

    kills = [f for f in faults if f.kind in ("sigkill", "sigstop") and f.job]
    lost_s = [_lost_compute(f, events) for f in kills]
    out.stats.update(
        jobs=len(jobs),
        done=sum(j["status"] == "done" for j in jobs),
        failed=sum(j["status"] == "failed" for j in jobs),
        duplicates=duplicates + dup_counter + dup_metrics,
        lost_jobs=lost,
        reclaims=sum(max(0, j["attempt"] - 1) for j in jobs),
        interruptions=sum(j["interruptions"] for j in jobs),
        failures=sum(j["failures"] for j in jobs),
        kills_on_jobs=len(kills),
        lost_compute_s=sum(lost_s),
        mean_lost_per_kill_s=sum(lost_s) / len(lost_s) if lost_s else 0.0,
        max_lost_per_kill_s=max(lost_s, default=0.0),
    )
    return out


def _check_jobs(out: Findings, jobs: list[dict], events: list[dict]) -> int:
    done_events = Counter(e["job_id"] for e in events if e["type"] == "done")
    duplicates = 0
    for j in jobs:
        name = f"job {j['id']} [{j['stage']}]"
        if j["status"] not in ("done", "failed", "cancelled"):
            out.violations.append(f"{name} is stuck in '{j['status']}'")
            continue
        if j["lease_token"] is not None or j["lease_owner"] is not None:
            out.violations.append(f"{name} is {j['status']} but still holds a lease")
        if j["failures"] > j["max_failures"] or j["interruptions"] > j["max_interruptions"]:
            out.violations.append(
                f"{name}: failures {j['failures']}/{j['max_failures']}, "
                f"interruptions {j['interruptions']}/{j['max_interruptions']} exceed their limits"
            )
        if j["stage"] == "poison":
            if (
                j["status"] != "failed"
                or j["failures"] != j["max_failures"]
                or "asked to fail" not in (j["error"] or "")
            ):
                out.violations.append(
                    f"{name}: expected failed after exactly {j['max_failures']} failures, got {j['status']} "
                    f"with {j['failures']} ({(j['error'] or '').strip().splitlines()[-1:]})"
                )
            continue
        allowed = 1 if j["stage"] == "flaky" else 0
        if j["status"] != "done" or j["result"] is None:
            out.violations.append(f"{name} ended {j['status']}: {(j['error'] or '').strip().splitlines()[-1:]}")
        elif j["failures"] > allowed:
            out.violations.append(f"{name} counted {j['failures']} failure(s), expected at most {allowed}")
        if done_events[j["id"]] > 1:
            duplicates += done_events[j["id"]] - 1
            out.violations.append(f"{name} was completed {done_events[j['id']]} times")
    return duplicates


def _check_counters(out: Findings, jobs: list[dict], counter: Path) -> tuple[int, int]:
    lost = dups = 0
    for j in jobs:
        if j["stage"] == "poison":
            continue
        if j["status"] != "done":
            lost += 1
            continue
        if j["kind"] != "noop" or not j["params"].get("counter_dir"):
            continue
        path = counter / j["id"]
        lines = path.read_text().split() if path.exists() else []
        if not lines:
            lost += 1
            out.violations.append(f"job {j['id']} [{j['stage']}] is done but its side effect never happened")
        elif len(lines) > 1:
            dups += len(lines) - 1
            out.violations.append(f"job {j['id']} [{j['stage']}] ran to the end {len(lines)} times (attempts {lines})")
        elif lines[0] != str(j["result"].get("attempt")):
            out.violations.append(
                f"job {j['id']}: side effect by attempt {lines[0]}, result by attempt {j['result'].get('attempt')}"
            )
    return lost, dups


def _check_mlflow(out: Findings, jobs: list[dict], store: str) -> int:
    """`store`: the MLflow tracking URI, a SQLite file or a PostgreSQL database (same tables)."""
    if store.startswith("sqlite:") and not Path(sa.make_url(store).database or "").exists():
        out.violations.append(f"no MLflow store at {store}")
        return 0
    engine = engine_for(store)
    try:
        with engine.connect() as conn:
            runs = defaultdict(list)
            for run_uuid, job_id in conn.execute(sa.text("SELECT run_uuid, value FROM tags WHERE key = 'job_id'")):
                runs[job_id].append(run_uuid)
            status = dict(conn.execute(sa.text("SELECT run_uuid, status FROM runs")).all())
            dup_rows = conn.execute(
                sa.text(
                    "SELECT run_uuid, key, step, count(*) FROM metrics GROUP BY run_uuid, key, step HAVING count(*) > 1"
                )
            ).all()
            steps = defaultdict(set)
            for run_uuid, step in conn.execute(sa.text("SELECT run_uuid, step FROM metrics WHERE key = 'noop_step'")):
                steps[run_uuid].add(step)
    except sa.exc.DBAPIError as exc:
        out.violations.append(f"MLflow store {mask_password(store)} unreadable: {str(exc.orig).strip()}")
        return 0
    finally:
        engine.dispose()
    for run_uuid, key, step, n in dup_rows[:20]:
        out.violations.append(f"MLflow run {run_uuid}: metric '{key}' has {n} points at step {step}")
    for j in jobs:
        if j["attempt"] == 0:
            continue
        got = runs.get(j["id"], [])
        if len(got) != 1 or got[0] != j["tracking_run_id"]:
            out.violations.append(
                f"job {j['id']} [{j['stage']}]: MLflow runs {got}, queue recorded {j['tracking_run_id']}"
            )
        if j["status"] == "done" and got and status.get(got[0]) != "FINISHED":
            out.violations.append(f"job {j['id']} is done but its MLflow run is {status.get(got[0])}")
        if j["kind"] == "noop" and j["status"] == "done" and got:
            want = set(range(1, int(j["params"].get("steps", 1)) + 1))
            if steps[got[0]] != want:
                missing = sorted(want - steps[got[0]])
                out.violations.append(f"job {j['id']}: MLflow noop_step history misses steps {missing[:10]}")
    return sum(n - 1 for *_, n in dup_rows)


def _load_artifact(art: dict, state: Path) -> bytes:
    data = (state / art["location"]).read_bytes() if art["location"] else bytes(art["blob"])
    if hashlib.sha256(data).hexdigest() != art["sha256"]:
        raise ValueError("fails its sha256")
    return data


def _check_weights(out: Findings, jobs: list[dict], artifacts: list[dict], state: Path, reference: References) -> None:
    import torch

    by_job = {(a["job_id"], a["name"]): a for a in artifacts}
    for j in jobs:
        if j["kind"] != "train" or j["status"] != "done":
            continue
        name = f"train job {j['id']} ({j['label']})"
        ref = reference.get(params_key(j["params"]))
        if ref is None:
            out.violations.append(f"{name}: no clean run to compare with")
            continue
        art = by_job.get((j["id"], "model.pt"))
        if art is None:
            out.violations.append(f"{name}: no model.pt artifact")
            continue
        try:
            blob = torch.load(io.BytesIO(_load_artifact(art, state)), weights_only=True)
        except Exception as exc:
            out.violations.append(f"{name}: model.pt unreadable: {exc}")
            continue
        weights = blob["state_dict"]
        differ = [k for k in ref.weights if k not in weights or not torch.equal(ref.weights[k], weights[k])]
        if differ or set(weights) != set(ref.weights):
            out.violations.append(f"{name}: final weights differ from the clean run in {differ or 'their keys'}")
        for key in ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "target_step"):
            if j["result"].get(key) != ref.result.get(key):
                out.violations.append(f"{name}: {key} {j['result'].get(key)} != clean run's {ref.result.get(key)}")


def _check_workers(out: Findings, procs: list[Any]) -> None:
    for p in procs:
        expected = -9 if p.killed else 0
        text = p.log.read_text(errors="replace") if p.log.exists() else ""
        if p.exit_code is not None and p.exit_code != expected:
            tail = p.log.read_text(errors="replace").strip().splitlines()[-3:]
            out.violations.append(f"worker pid {p.pid} exited {p.exit_code} (expected {expected}): {tail}")
        if "Traceback (most recent call last)" in text:
            at = text.index("Traceback (most recent call last)")
            out.violations.append(f"worker pid {p.pid} printed a traceback: {text[at : at + 600]!r}")


def _lost_compute(fault: Any, events: list[dict]) -> float:
    """Seconds of work the killed attempt did after its last checkpoint (or its claim)."""
    marks = [
        e["ts"]
        for e in events
        if e["job_id"] == fault.job
        and e["attempt"] == fault.attempt
        and e["type"] in ("claimed", "checkpointed")
        and e["ts"] <= fault.wall
    ]
    return max(0.0, fault.wall - max(marks)) if marks else 0.0


# ---------------------------------------------------------------------------------------------
# The clean run


def clean_run(params_list: list[dict[str, Any]], workdir: Path, env: dict[str, str]) -> References:
    """Run each train configuration once with one worker and no faults; return weights and results."""
    import torch

    workdir.mkdir(parents=True, exist_ok=True)
    grid = workdir / "clean.yaml"
    configs = "\n".join(f"      - {json.dumps(p)}" for p in params_list)
    grid.write_text(
        textwrap.dedent("""\
        sweep: clean
        stages:
          train:
            kind: train
            configs:
        """)
        + configs
        + "\n"
    )
    state = workdir / "state"
    base = [sys.executable, "-m", "sweeper.cli"]
    for args in (["enqueue", str(grid)], ["work", "--no-tracking", "--threads-per-worker", "1"]):
        proc = subprocess.run(
            [*base, *args, "--state", str(state)], env=env, capture_output=True, text=True, timeout=900
        )
        if proc.returncode != 0:
            raise RuntimeError(f"clean run failed ({' '.join(args[:1])}): {proc.stderr[-3000:]}")
    engine = engine_for(f"sqlite:///{state / 'queue.db'}")
    refs: References = {}
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT j.params, j.result, a.location, a.blob, a.sha256, j.status FROM jobs j "
                    "LEFT JOIN artifacts a ON a.job_id = j.id AND a.name = 'model.pt'"
                )
            ).all()
    finally:
        engine.dispose()
    for params, result, location, blob, sha, status in rows:
        if status != "done":
            raise RuntimeError(f"clean run: a train job ended {status}")
        data = _load_artifact({"location": location, "blob": blob, "sha256": sha}, state)
        refs[params_key(_json(params))] = Reference(
            torch.load(io.BytesIO(data), weights_only=True)["state_dict"], _json(result)
        )
    return refs
