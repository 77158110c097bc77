"""What ran is what is recorded (issue 18): effective params, provenance per attempt, code drift.

Real workers (subprocesses), real SQLite and PostgreSQL queues, a real MLflow store.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import sqlalchemy as sa

import sweeper
from sweeper.store.db import SCHEMA_VERSION, attempts, jobs, meta, open_database
from tests.conftest import REPO, run_cli

TRAIN_GRID = """\
sweep: recorded
stages:
  search:
    kind: train
    params: {dataset: synthetic, train_subset: 256, test_subset: 128, max_epochs: 1, eval_train: false}
    grid:
      lr: [0.01]
  follow:
    kind: train
    needs: [search]
    inherit: {from: search, metric: test_accuracy, mode: max, keys: [conv2]}
    params: {dataset: synthetic, train_subset: 256, test_subset: 128, max_epochs: 1, eval_train: false, lr: 0.02}
"""

NOOP_GRID = """\
sweep: noops
stages:
  up:
    kind: noop
    grid:
      value: [0.2, 0.9]
  down:
    kind: noop
    needs: [up]
    inherit: {from: up, metric: value, mode: max, keys: [seed, steps]}
    params: {value: 1.0}
"""


def _ids(db: str, cwd: Path) -> dict[str, str]:
    proc = run_cli("export", "--csv", "-", "--db", db, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return {r["label"] or r["stage"]: r["id"] for r in csv.DictReader(io.StringIO(proc.stdout))}


def test_train_job_records_its_defaults_everywhere_and_hands_conv2_on(tmp_path: Path):
    """The grid writes only lr: batch_size, init, momentum and conv2 reach show, the CSV and MLflow,
    and `inherit: conv2` from that job works although conv2 was left at its default."""
    (tmp_path / "g.yaml").write_text(TRAIN_GRID)
    state = tmp_path / "state"
    assert run_cli("enqueue", "g.yaml", "--state", str(state), cwd=tmp_path).returncode == 0
    proc = run_cli("work", "--workers", "1", "--state", str(state), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    db = f"sqlite:///{state / 'queue.db'}"
    ids = _ids(db, tmp_path)
    search, follow = ids["lr=0.01"], ids["follow"]

    doc = json.loads(run_cli("show", search, "--json", "--state", str(state), cwd=tmp_path).stdout)
    effective = doc["params_effective"]
    assert doc["params_written"].keys().isdisjoint({"batch_size", "init", "momentum", "conv2"})
    assert (effective["batch_size"], effective["init"], effective["momentum"]) == (32, "xavier_uniform", 0.9)
    assert effective["conv2"] == {"channels": 16, "kernel": 3} and effective["lr"] == 0.01
    provenance = doc["attempts"][0]["provenance"]
    for key in ("sweeper_version", "python", "torch_version", "host", "code", "device"):
        assert provenance.get(key), (key, provenance)
    assert isinstance(provenance["load_1m"], float) and provenance["load_1m"] >= 0
    assert provenance["device"].startswith("cpu")  # the kind's ctx.add_provenance, over the worker's guess

    down = json.loads(run_cli("show", follow, "--json", "--state", str(state), cwd=tmp_path).stdout)
    assert down["status"] == "done", down["error"]
    assert down["params_resolved"]["conv2"] == {"channels": 16, "kernel": 3}
    assert down["provenance"] == {"conv2": search}

    text = run_cli("show", search, "--state", str(state), cwd=tmp_path, COLUMNS="160").stdout
    row = next(line for line in text.splitlines() if line.startswith("conv2.channels"))
    assert "(default)" in row and "16" in row
    assert "torch" in text and provenance["code"] in text

    rows = list(csv.DictReader(io.StringIO(run_cli("export", "--csv", "-", "--db", db, cwd=tmp_path).stdout)))
    mine = next(r for r in rows if r["id"] == search)
    assert (mine["params.batch_size"], mine["params.init"], mine["params.momentum"]) == ("32", "xavier_uniform", "0.9")
    assert mine["params.conv2.channels"] == "16"

    frame = sweeper.results(state=state)
    assert list(frame.columns[:3]) == ["id", "sweep", "stage"] and len(frame) == 2
    assert frame.set_index("id").loc[search, "params.conv2.channels"] == 16
    assert sweeper.show(search[:8], state=state)["params_effective"] == effective

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{state / 'mlflow.db'}")
    exp = client.get_experiment_by_name("recorded")
    runs = {r.data.tags["job_id"]: r for r in client.search_runs([exp.experiment_id])}
    run = runs[search]
    for key, value in {"batch_size": "32", "init": "xavier_uniform", "momentum": "0.9", "conv2.channels": "16"}.items():
        assert run.data.params[key] == value
    assert run.data.tags["provenance.code"] == provenance["code"]
    assert run.data.tags["provenance.torch_version"] == provenance["torch_version"]
    assert run.data.tags["mlflow.runName"].startswith("lr=0.01 · search")
    assert run.data.tags["stage"] == "search"


def test_effective_params_and_provenance_on_both_backends(db_url: str, tmp_path: Path):
    """noop jobs: the kind's defaults recorded with each job, one provenance row per attempt, and
    `inherit` of keys the upstream grid never wrote (seed, steps)."""
    (tmp_path / "g.yaml").write_text(NOOP_GRID)
    assert run_cli("enqueue", "g.yaml", "--db", db_url, cwd=tmp_path).returncode == 0
    proc = run_cli(
        "work", "--workers", "1", "--db", db_url, "--state", str(tmp_path / "state"), "--no-tracking", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    ids = _ids(db_url, tmp_path)
    best, down = ids["value=0.9"], ids["down"]

    doc = sweeper.show(best, db=db_url, state=tmp_path / "state")
    assert doc["params_written"] == {"value": 0.9}
    assert doc["params_effective"]["steps"] == 1 and doc["params_effective"]["seed"] == 0
    assert doc["params_effective"]["checkpoint"] is True
    assert [a["provenance"]["code"] for a in doc["attempts"]] == [doc["attempts"][0]["provenance"]["code"]]
    assert "torch_version" not in doc["attempts"][0]["provenance"]  # noop's code never imports torch

    dependent = sweeper.show(down, db=db_url, state=tmp_path / "state")
    assert dependent["status"] == "done", dependent["error"]
    assert dependent["params_resolved"]["seed"] == 0 and dependent["params_resolved"]["steps"] == 1
    assert dependent["provenance"] == {"seed": best, "steps": best}

    frame = sweeper.results(db=db_url, state=tmp_path / "state", sweep="noops")
    assert set(frame["params.steps"]) == {1} and set(frame["status"]) == {"done"}
    assert frame["finished_at"].notna().all()

    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            counted = conn.execute(sa.select(sa.func.count()).select_from(attempts)).scalar_one()
            recorded = conn.execute(sa.select(sa.func.count()).where(jobs.c.params_effective.is_not(None))).scalar_one()
    finally:
        engine.dispose()
    assert counted == 3 and recorded == 3


def test_a_schema_1_queue_is_migrated_and_keeps_its_jobs(db_url: str, tmp_path: Path):
    """A queue written before effective params: migrated on open, its jobs intact, their params
    shown as not recorded, and a hand-off from them still sees the kind's defaults."""
    (tmp_path / "g.yaml").write_text(NOOP_GRID)
    assert run_cli("enqueue", "g.yaml", "--db", db_url, cwd=tmp_path).returncode == 0
    db = open_database(db_url)
    with db.write() as conn:  # back to schema 1, as an older sweeper left it
        conn.execute(sa.text("DROP TABLE attempts"))
        conn.execute(sa.text("ALTER TABLE jobs DROP COLUMN params_effective"))
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value="1"))
    db.dispose()

    db = open_database(db_url)
    try:
        with db.read() as conn:
            assert conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar() == str(
                SCHEMA_VERSION
            )
            rows = conn.execute(sa.select(jobs.c.stage, jobs.c.params_effective, jobs.c.status)).all()
    finally:
        db.dispose()
    assert sorted((r.stage, r.status) for r in rows) == [("down", "blocked"), ("up", "pending"), ("up", "pending")]
    assert all(r.params_effective is None for r in rows)
    proc = run_cli(
        "work", "--workers", "1", "--db", db_url, "--state", str(tmp_path / "state"), "--no-tracking", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert sweeper.show(_ids(db_url, tmp_path)["down"], db=db_url)["status"] == "done"


DRIFT_KIND = '''\
"""A kind whose second job checkpoints and fails on its first attempt."""


def run(ctx, params):
    state = ctx.restore()
    if params["value"] == 2 and state is None:
        ctx.checkpoint({"step": 1})
        raise RuntimeError("first attempt stops after its checkpoint")
    return {"value": float(params["value"])}
'''


def test_a_resume_under_other_code_is_logged_recorded_and_flagged(tmp_path: Path):
    """The kind's source changes between two attempts: the worker says so, the job's events keep it,
    and `status` and the report warn that the stage's done jobs ran under two code versions."""
    (tmp_path / "driftkind.py").write_text(DRIFT_KIND)
    (tmp_path / "g.yaml").write_text(
        "sweep: drift\nstages:\n  s:\n    kind: driftkind:run\n    grid:\n      value: [1, 2]\n"
    )
    state = str(tmp_path / "state")
    assert run_cli("enqueue", "g.yaml", "--state", state, cwd=tmp_path).returncode == 0
    first = run_cli(
        "work", "--workers", "1", "--state", state, "--no-tracking", "--max-jobs", "2", "--retry-backoff", "0",
        cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    (tmp_path / "driftkind.py").write_text(DRIFT_KIND + "\n# edited between two Colab sessions\n")
    second = run_cli("work", "--workers", "1", "--state", state, "--no-tracking", "--retry-backoff", "0", cwd=tmp_path)
    assert second.returncode == 0, second.stderr

    ids = _ids(f"sqlite:///{tmp_path / 'state' / 'queue.db'}", tmp_path)
    doc = sweeper.show(ids["value=2"], state=state)
    codes = [a["provenance"]["code"] for a in doc["attempts"]]
    assert len(codes) == 2 and codes[0] != codes[1]
    changed = [e for e in doc["events"] if e["type"] == "code_changed"]
    assert len(changed) == 1 and codes[0] in changed[0]["detail"] and codes[1] in changed[0]["detail"]
    assert "warning: job" in second.stderr and "resumes from a checkpoint of attempt 1" in second.stderr
    assert "resumes from a checkpoint" not in first.stderr

    status = json.loads(run_cli("status", "--json", "--state", state, cwd=tmp_path).stdout)
    stage = next(s for s in status["stages"] if s["stage"] == "s")
    assert sorted(stage["code_versions"].values()) == [1, 1] and "2 versions of the job code" in stage["warning"]
    text = run_cli("status", "--state", state, cwd=tmp_path).stdout
    assert "warning: the done jobs of stage s ran under 2 versions" in " ".join(text.split())
    assert (
        run_cli("report", "--out", "rep", "--state", state, "--no-plugins", "--no-plots", cwd=tmp_path).returncode == 0
    )
    assert "ran under 2 versions of the job code" in (tmp_path / "rep" / "report.md").read_text()


def test_importing_sweeper_stays_light():
    """`sweeper.results` imports pandas only when called: `import sweeper` loads none of the heavy ones."""
    code = "import sys, sweeper; print(sorted(m for m in ('pandas', 'torch', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_run_names_lead_with_the_grid_values():
    from sweeper.running.tracking import RunInfo, compact_label, run_name

    assert compact_label("conv1.channels=8 conv2.channels=16 dense=64") == "c1.ch=8 c2.ch=16 de=64"
    assert compact_label("batch_size=32 lr=0.01") == "bs=32 lr=0.01"
    # two keys that would shorten alike keep their full names
    assert compact_label("momentum=0.9 model=3") == "momentum=0.9 model=3"
    runs = [RunInfo("s", "model_search", str(i), "train", f"conv1.channels={c} dense={d}", 1, {}) for i, (c, d) in
            enumerate([(8, 64), (8, 100), (16, 64), (16, 100)])]  # fmt: skip
    names = [run_name(r) for r in runs]
    assert len({n[:14] for n in names}) == 4  # the runs table's first characters tell them apart
    assert run_name(RunInfo("s", "prune_conv1", "x", "prune", "", 1, {})) == "prune_conv1"


def test_run_name_masks_a_secret_in_the_label():
    from sweeper.running.tracking import RunInfo, run_name

    name = run_name(RunInfo("s", "a", "x", "k", "db=postgresql://alice:S3cretPW@h/x", 1, {}))
    assert "S3cretPW" not in name


def test_the_grid_label_masks_secret_values():
    from sweeper.grid.spec import parse_spec

    spec = parse_spec(
        textwrap.dedent(
            """\
            sweep: s
            stages:
              a:
                kind: noop
                grid:
                  value: [1]
                  counter_dir: ["postgresql://alice:S3cretPW@h/x"]
            """
        )
    )
    assert spec.jobs[0].label == "value=1 counter_dir=postgresql://alice:***@h/x"
    assert spec.jobs[0].params["counter_dir"] == "postgresql://alice:S3cretPW@h/x"  # the job gets the real one


def test_the_code_hash_covers_what_the_kind_imports_from_its_package(tmp_path: Path, monkeypatch):
    """Edit a module the kind imports: a new hash. Edit one it does not: the same hash."""
    from sweeper.running.provenance import _code_provenance

    pkg = tmp_path / "mykinds"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "kind.py").write_text(
        "from . import helper\nfrom mykinds.deep import tools\nimport json\n\ndef run(ctx, p):\n    return {}\n"
    )
    (pkg / "helper.py").write_text("X = 1\n")
    (pkg / "deep").mkdir()
    (pkg / "deep" / "__init__.py").write_text("")
    (pkg / "deep" / "tools.py").write_text("import torch\n")
    (pkg / "unrelated.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    first = _code_provenance("mykinds.kind")
    assert first["code_files"] == 5 and first["torch_version"]  # kind, helper, deep/tools and two __init__
    (pkg / "unrelated.py").write_text("Y = 2\n")
    assert _code_provenance("mykinds.kind")["code"] == first["code"]
    (pkg / "deep" / "tools.py").write_text("import torch  # edited\n")
    second = _code_provenance("mykinds.kind")["code"]
    assert second != first["code"]
    (pkg / "helper.py").write_text("X = 2\n")
    assert _code_provenance("mykinds.kind")["code"] not in (first["code"], second)
