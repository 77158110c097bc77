"""A full or read-only disk under a real worker (a small tmpfs, mounted by the test; needs root).

The promise: a checkpoint that cannot be written fails cleanly (no half file, no temp file left),
the previous checkpoint stays valid, the job fails with the reason in its last line, the queue is
never corrupted, and once the disk is fixed the job resumes from its last good checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import run_cli, start_worker, stop_process, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros until the filesystem is full."""
    filler = directory / "filler"
    # Unbuffered: a buffered file would raise ENOSPC again on close(), flushing what it still holds.
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler


def rows(db: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def jobs(db: Path) -> dict[str, dict]:
    return {r["stage"]: dict(r) for r in rows(db, "select * from jobs")}


def integrity(db: Path) -> str:
    return rows(db, "pragma integrity_check")[0][0]


GRID = """
sweep: disk
stages:
  long: {kind: noop, params: {steps: 120, step_s: 0.05, checkpoint: true}, max_failures: 2}
  other: {kind: noop, params: {steps: 1, checkpoint: false}}
"""
WORK = ("--workers", "1", "--no-tracking", "--retry-backoff", "0", "--threads-per-worker", "1")  # short leases below


@pytest.mark.parametrize(
    "problem, reason", [("full", "No space left on device"), ("read-only", "Read-only file system")]
)
def test_a_checkpoint_that_cannot_be_written_fails_cleanly_and_the_last_good_one_resumes(
    problem: str, reason: str, tmp_path: Path
) -> None:
    state, db = tmp_path / "state", tmp_path / "queue.db"  # the queue on a good disk, checkpoints on a bad one
    url = f"sqlite:///{db}"
    grid = tmp_path / "grid.yaml"
    grid.write_text(textwrap.dedent(GRID))
    assert run_cli("enqueue", str(grid), "--state", str(state), "--db", url).returncode == 0
    log = tmp_path / "worker.log"
    with tmpfs(state / "checkpoints", "1m") as ckpts:
        worker = start_worker("--state", str(state), "--db", url, *WORK, log=log)
        try:
            wait_for(lambda: len(rows(db, "select id from checkpoints")) >= 2, timeout=120, what="checkpoints")
            if problem == "full":
                filler = fill(ckpts)
            else:
                subprocess.run(["mount", "-o", "remount,ro", str(ckpts)], check=True)
            assert worker.wait(timeout=180) == 0, log.read_text()
        finally:
            stop_process(worker)

        long = jobs(db)["long"]
        assert (long["status"], long["failures"]) == ("failed", 2), long
        last = [ln for ln in long["error"].strip().splitlines() if ln.strip()]
        assert any(reason in ln and "cannot write" in ln for ln in last[-3:]), long["error"]
        assert jobs(db)["other"]["status"] == "done"
        text = log.read_text()
        assert reason in text and "Traceback" not in text
        # The previous checkpoint is intact, and no half-written or temporary file is left.
        recorded = rows(db, "select location, sha256, seq from checkpoints order by seq desc")
        assert recorded
        for r in recorded:
            assert hashlib.sha256((state / r["location"]).read_bytes()).hexdigest() == r["sha256"]
        assert not [p for p in ckpts.rglob("*") if p.name.endswith(".tmp")]
        assert integrity(db) == "ok"
        last_good = recorded[0]["seq"]

        # Fix the disk, retry the job: it resumes from its last good checkpoint.
        if problem == "full":
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(ckpts)], check=True)
        assert run_cli("retry", "--failed", "--state", str(state), "--db", url).returncode == 0
        proc = run_cli("work", "--state", str(state), "--db", url, *WORK)
        assert proc.returncode == 0, proc.stderr
    long = jobs(db)["long"]
    assert long["status"] == "done", long["error"]
    assert json.loads(long["result"])["resumed_from"] >= last_good


def test_a_full_disk_under_the_queue_stops_the_worker_with_a_clear_message_and_corrupts_nothing(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    grid = tmp_path / "grid.yaml"
    grid.write_text(textwrap.dedent(GRID))
    log = tmp_path / "worker.log"
    with tmpfs(state, "16m"):  # room for SQLite's WAL once the filler is gone
        assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
        db = state / "queue.db"
        worker = start_worker("--state", str(state), "--db-outage-limit", "3", "--lease-ttl", "2", *WORK, log=log)
        try:
            wait_for(lambda: len(rows(db, "select id from checkpoints")) >= 2, timeout=120, what="checkpoints")
            filler = fill(state)
            code = worker.wait(timeout=180)
        finally:
            stop_process(worker)
        text = log.read_text()
        assert code == 3, text
        assert "giving up" in text and "could not be written" in text and "free space" in text, text
        assert "Traceback" not in text
        filler.unlink()
        assert integrity(db) == "ok"
        assert jobs(db)["long"]["failures"] <= 1  # a full disk under the queue is not the job's fault
        proc = run_cli("work", "--state", str(state), "--lease-ttl", "2", "--wait", "--poll", "0.2", *WORK)
        assert proc.returncode == 0, proc.stderr
        assert {s: j["status"] for s, j in jobs(db).items()} == {"long": "done", "other": "done"}
        assert integrity(db) == "ok"
