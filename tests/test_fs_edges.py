"""File-system edges: a read-only state directory, a state directory that is not there, output paths
that cannot work.

Read-only commands (status, show, export, report) read a state directory they may not write
(SQLite opened read-only); the others say plainly that it is not writable. Tests run as root
here, and chmod does not stop root, so the read-only directory is a read-only bind mount, made
in a private mount namespace (`unshare -m`) that ends with the test: nothing is mounted on the
shared machine. Where that is not allowed the test is skipped with the reason; the read-only
engine itself is also checked without a mount (test_the_read_only_engine_reads_and_refuses_writes).
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

import sweeper.store.db as dbmod
from sweeper.store.db import open_database
from sweeper.store.queue import Queue
from tests.unit.clirun import sweeper as invoke

from .conftest import cli_env, run_cli

GRID = "sweep: fs\nstages:\n  a: {kind: noop, grid: {value: [1, 2]}, params: {steps: 2, checkpoint: true}}\n"
READERS = {
    "status": ["status"],
    "status-json": ["status", "--json"],
    "show": ["show", "JOB"],
    "export": ["export", "--csv", "OUT/jobs.csv"],
    "report": ["report", "--out", "OUT/report", "--no-plugins", "--no-plots"],
    "dry-run": ["enqueue", "--dry-run", "GRID"],
}
WRITERS = {"enqueue": ["enqueue", "GRID"], "retry": ["retry", "--failed"], "work": ["work", "--no-tracking"]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A state directory with a sweep run to the end by a real worker, left as a clean exit leaves it."""
    tmp = tmp_path_factory.mktemp("fs")
    (tmp / "g.yaml").write_text(GRID)
    state = tmp / "state"
    assert run_cli("enqueue", str(tmp / "g.yaml"), "--state", str(state)).returncode == 0
    proc = run_cli("work", "--workers", "1", "--state", str(state), "--no-tracking", "--retry-backoff", "0")
    assert proc.returncode == 0, proc.stderr
    assert not (state / "queue.db-wal").exists()  # the last connection folded the WAL back in
    return state


def copy_state(finished: Path, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    shutil.copytree(finished, state)
    return state


def job_id(state: Path) -> str:
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT id FROM jobs ORDER BY id")).scalars().first()
    finally:
        engine.dispose()


def digest(state: Path) -> dict[str, str]:
    return {
        str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest() for p in state.rglob("*") if p.is_file()
    }


def _can_mount_read_only(tmp_path: Path) -> str | None:
    """Why a private read-only bind mount cannot be made here (None: it can)."""
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    src, dst = tmp_path / "probe-src", tmp_path / "probe-dst"
    src.mkdir()
    dst.mkdir()
    probe = f"mount --bind {src} {dst} && mount -o remount,ro,bind {dst} && ! touch {dst}/x 2>/dev/null"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"cannot make a read-only bind mount in a private mount namespace: {proc.stderr.strip()[:200]}"
    return None


def run_on_read_only_mount(state: Path, tmp_path: Path, commands: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """Mount `state` read-only at tmp/ro in a private namespace and run each command on it there."""
    why = _can_mount_read_only(tmp_path)
    if why is not None:
        pytest.skip(why)
    ro, out = tmp_path / "ro", tmp_path / "out"
    ro.mkdir()
    out.mkdir()
    (tmp_path / "g.yaml").write_text(GRID)
    subst = {"JOB": job_id(state), "OUT": str(out), "GRID": str(tmp_path / "g.yaml")}
    lines = ["set -e", f"mount --bind {state} {ro}", f"mount -o remount,ro,bind {ro}", "set +e"]
    for name, args in commands.items():
        argv = [sys.executable, "-m", "sweeper.cli", *args, "--state", str(ro)]
        argv = [next((a.replace(k, v) for k, v in subst.items() if k in a), a) for a in argv]
        lines.append(f"{shlex.join(argv)} > {out / name}.log 2>&1; echo $? > {out / name}.rc")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", "\n".join(lines)], env=cli_env(), timeout=600)
    assert proc.returncode == 0
    return {name: (int((out / f"{name}.rc").read_text()), (out / f"{name}.log").read_text()) for name in commands}


def test_read_only_commands_work_on_a_read_only_state_directory(finished, tmp_path):
    state = copy_state(finished, tmp_path)
    before = digest(state)
    results = run_on_read_only_mount(state, tmp_path, {**READERS, **WRITERS})
    for name in READERS:
        code, text = results[name]
        assert code == 0 and "Traceback" not in text, f"{name}: {text}"
    assert "2 jobs: 2 done" in results["status"][1]
    assert '"done": 2' in results["status-json"][1]
    assert "wrote 2 job(s)" in results["export"][1] and (tmp_path / "out" / "jobs.csv").exists()
    assert (tmp_path / "out" / "report" / "report.md").exists()
    assert "checkpoints/fs/" in results["show"][1]  # it read the job's files from the mount
    for name in WRITERS:
        code, text = results[name]
        flat = " ".join(text.split())
        assert code == 2 and "Traceback" not in text, f"{name}: {text}"
        assert "is not writable here, so its queue can only be read" in flat, f"{name}: {text}"
    assert digest(state) == before  # nothing written, not even a -wal or -shm file


def test_a_read_only_copy_of_a_live_state_with_its_wal_is_read_too(finished, tmp_path):
    """A state copied while workers ran (its -wal and -shm files with it) is opened read-only, not immutable."""
    state = copy_state(finished, tmp_path)
    conn = __import__("sqlite3").connect(state / "queue.db")  # a live writer: its -wal and -shm exist
    try:
        conn.execute("UPDATE jobs SET label = label")
        conn.commit()
        shutil.copytree(state, tmp_path / "copy")
    finally:
        conn.close()
    assert (tmp_path / "copy" / "queue.db-wal").exists()
    results = run_on_read_only_mount(tmp_path / "copy", tmp_path, {"status": ["status"]})
    assert results["status"][0] == 0 and "2 jobs: 2 done" in results["status"][1], results


def test_the_read_only_engine_reads_and_refuses_writes(finished, tmp_path, monkeypatch):
    """Without a mount: the engine the read-only commands get where they may not write."""
    state = copy_state(finished, tmp_path)
    before = digest(state)
    monkeypatch.setattr(dbmod, "writable", lambda path: False)
    url = f"sqlite:///{state / 'queue.db'}"
    db = open_database(url, create=False, readonly=True)
    try:
        with db.read() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM jobs WHERE status = 'done'")).scalar_one() == 2
        with pytest.raises(sa.exc.OperationalError, match="readonly"), db.write() as conn:
            conn.execute(sa.text("UPDATE jobs SET label = 'x'"))
        with pytest.raises(dbmod.UsageError, match="is open read-only"):  # said at once, not retried
            Queue(db).register_worker("w:1", "host", 1, 1)
    finally:
        db.dispose()
    # The directory is writable after all, so SQLite made its -shm (the mount test covers the rest).
    assert digest(state)["queue.db"] == before["queue.db"]
    with pytest.raises(dbmod.UsageError, match="is not writable here"):
        open_database(url, create=False)  # a command that writes is told, not handed a read-only queue
    out = invoke("status", "--state", str(state))
    assert out.code == 0 and "2 jobs: 2 done" in out.text, out.text


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["show", "abcd1234"],
        ["export", "--csv", "-"],
        ["report", "--out", "REPORT"],
        ["retry", "--failed"],
        ["cancel", "--stage", "a"],
    ],
    ids=lambda a: " ".join(a),
)
def test_no_command_creates_a_state_directory_it_does_not_find(tmp_path, args):
    missing = tmp_path / "nonexistent"
    args = [a.replace("REPORT", str(tmp_path / "report")) for a in args]
    out = invoke(*args, "--state", str(missing))
    assert out.code == 2, out.text
    assert "no queue database" in out.flat and f"the directory {missing} does not exist" in out.flat, out.text
    assert not missing.exists() and not (tmp_path / "report").exists()


def test_report_onto_an_existing_file_is_a_usage_error_that_leaves_the_file(finished, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    out = invoke("report", "--out", str(afile), "--state", str(finished))
    assert out.code == 2, out.text
    assert "is a file; the report is a directory" in out.flat and "afile-report" in out.flat, out.text
    assert afile.read_text() == "mine"


def test_export_into_a_missing_directory_is_a_usage_error_that_creates_nothing(finished, tmp_path):
    target = tmp_path / "no" / "such" / "x.csv"
    out = invoke("export", "--csv", str(target), "--state", str(finished))
    assert out.code == 2, out.text
    assert f"the directory {target.parent} does not exist" in out.flat and "mkdir -p" in out.flat, out.text
    assert not (tmp_path / "no").exists()
    out = invoke("export", "--csv", str(tmp_path), "--state", str(finished))
    assert out.code == 2 and "is a directory" in out.flat, out.text
    out = invoke("export", "--csv", str(tmp_path / "x.csv"), "--state", str(finished))
    assert out.code == 0 and (tmp_path / "x.csv").read_text().startswith("id,"), out.text
