"""Tampered checkpoints: refused whatever their pickle protocol, kept in quarantine, never run (issue 19).

An attacker with write access to the queue and the state directory replaces a job's checkpoints
with pickles that would run a command when loaded (`touch MARKER`), and updates the recorded
sha256 so the bytes verify. Every such file, in pickle protocol 0 to 5 or as a torch.save zip with
a malicious global, must be refused as possibly malicious, moved (or copied, for a database blob)
to `quarantine/`, its row kept and flagged, an event recorded, and the command never run. A job
whose every checkpoint is refused fails at once, naming the file, and does not start over at
step 0 until `sweeper retry --from-scratch`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from sweeper.errors import RefusedCheckpoint, error_summary
from sweeper.grid.spec import parse_spec
from sweeper.store.checkpoints import CheckpointStore, decode, list_checkpoints
from sweeper.store.db import checkpoints, events, jobs, open_database
from sweeper.store.queue import Queue
from tests.conftest import run_cli

GRID = "sweep: s\nstages:\n  a: {kind: noop, params: {steps: 5}}\n"
PAYLOADS = [f"protocol-{p}" for p in range(6)] + ["torch-zip-global"]


class _Evil:
    """Unpickled by a loader that allows any global, this runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload(kind: str, marker: Path) -> bytes:
    state = {"step": 3, "resumed_from": None, "evil": _Evil(marker)}
    if kind.startswith("protocol-"):
        return pickle.dumps(state, protocol=int(kind.split("-")[1]))
    buf = io.BytesIO()
    torch.save(state, buf, pickle_module=pickle)  # a real torch zip whose data.pkl needs posix.system
    return buf.getvalue()


def tamper(queue: Queue, root: Path, job_id: str, data: bytes) -> list[str]:
    """Replace the bytes of every checkpoint of the job, with a matching sha256 (as an attacker would)."""
    digest = hashlib.sha256(data).hexdigest()
    names = []
    with queue.db.write() as conn:
        for row in conn.execute(sa.select(checkpoints).where(checkpoints.c.job_id == job_id)).all():
            values: dict = {"sha256": digest, "size": len(data)}
            if row.location:
                old = root / row.location
                new = old.with_name(f"seq-{row.seq:09d}.{digest}.ckpt")
                old.unlink()
                new.write_bytes(data)
                values["location"] = new.relative_to(root).as_posix()
                names.append(new.name)
            else:
                values["blob"] = data
                names.append(f"seq-{row.seq:09d}.{digest}.ckpt")
            conn.execute(checkpoints.update().where(checkpoints.c.id == row.id).values(**values))
    return names


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "pwned"
    assert not path.exists()
    return path


@pytest.fixture
def claimed(db_url, state_dir):
    db = open_database(db_url)
    queue = Queue(db)
    queue.enqueue(parse_spec(GRID, "g.yaml"))
    job = queue.claim("w", 30)
    yield queue, job
    db.dispose()


@pytest.mark.parametrize("mode", ["files", "db"])
@pytest.mark.parametrize("kind", PAYLOADS)
def test_a_tampered_checkpoint_in_any_protocol_is_refused_quarantined_and_never_run(
    claimed, state_dir, marker, mode, kind
):
    queue, job = claimed
    store = CheckpointStore(queue, state_dir, mode, keep=2)
    store.save(job.lease, "s", {"step": 1})
    store.save(job.lease, "s", {"step": 2})
    data = payload(kind, marker)
    names = tamper(queue, state_dir, job.id, data)

    with pytest.raises(RefusedCheckpoint) as refused:
        store.restore("s", job.id)
    assert not marker.exists()
    summary = error_summary(str(refused.value))
    newest = names[0] if names[0] > names[1] else names[1]
    digest = hashlib.sha256(data).hexdigest()
    assert newest.split(".")[0] in summary and digest in summary and f"quarantine/s/{job.id}" in summary, summary
    assert "refused as possibly malicious" in summary and "(and 1 older one(s))" in summary

    kept = sorted((state_dir / "quarantine" / "s" / job.id).iterdir())
    assert [p.read_bytes() for p in kept] == [data, data]  # the evidence, byte for byte
    assert not list((state_dir / "checkpoints").rglob("*.ckpt"))  # moved, not copied, for files
    rows = list_checkpoints(queue, job.id)
    assert len(rows) == 2 and all(r.location.startswith(f"quarantine/s/{job.id}/") for r in rows)
    with queue.db.read() as conn:
        noted = conn.execute(sa.select(events.c.detail).where(events.c.type == "quarantined")).scalars().all()
    assert len(noted) == 2 and all(digest in d and "quarantine/" in d for d in noted)

    # Asked again (the next attempt), the job is still refused: it never starts over silently.
    with pytest.raises(RefusedCheckpoint, match="refused in an earlier attempt"):
        store.restore("s", job.id)
    # A new checkpoint prunes older ones: never the quarantined rows or files.
    store.save(job.lease, "s", {"step": 9})
    store.save(job.lease, "s", {"step": 10})
    store.save(job.lease, "s", {"step": 11})
    assert len([r for r in list_checkpoints(queue, job.id) if r.location and r.location.startswith("quarantine/")]) == 2
    assert [p.read_bytes() for p in sorted((state_dir / "quarantine" / "s" / job.id).iterdir())] == [data, data]
    assert store.restore("s", job.id).state["step"] == 11  # a good checkpoint after them loads again
    assert not marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_decode_refuses_every_protocol_before_unpickling(marker, kind):
    with pytest.raises(RefusedCheckpoint, match="possibly malicious"):
        decode(payload(kind, marker), "checkpoint x")
    assert not marker.exists()


def test_a_job_whose_every_checkpoint_is_tampered_fails_once_and_restarts_only_from_scratch(tmp_path, marker):
    """The must-show: a protocol-4 pickle over every checkpoint of a job, then a real worker."""
    state = tmp_path / "state"
    state.mkdir()
    url = f"sqlite:///{state / 'queue.db'}"
    db = open_database(url)
    queue = Queue(db)
    queue.enqueue(parse_spec(textwrap.dedent(GRID), "g.yaml"))
    job = queue.claim("earlier-session", 30)
    store = CheckpointStore(queue, state, "files")
    store.save(job.lease, "s", {"step": 2, "resumed_from": None})
    store.save(job.lease, "s", {"step": 3, "resumed_from": None})
    queue.release(job.lease, "the earlier session ended")
    data = payload("protocol-4", marker)
    names = tamper(queue, state, job.id, data)

    def work() -> str:
        proc = run_cli(
            "work", "--db", url, "--state", str(state), "--no-tracking", "--retry-backoff", "0", cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    def row() -> sa.Row:
        with db.read() as conn:
            return conn.execute(sa.select(jobs).where(jobs.c.id == job.id)).one()

    log = work()
    r = row()
    assert (r.status, r.failures, r.attempt) == ("failed", 1, 2), r.error  # failed at once: no retries
    newest = max(names)
    assert newest in error_summary(r.error) and hashlib.sha256(data).hexdigest() in r.error
    assert f"quarantine/s/{job.id}/{newest}" in r.error and f"retry --from-scratch {job.id}" in r.error
    assert newest in log and "\x1b" not in log
    assert r.result is None and not marker.exists()
    assert sorted(p.name for p in (state / "quarantine" / "s" / job.id).iterdir()) == sorted(names)
    rows = list_checkpoints(queue, job.id)
    assert len(rows) == 2 and all(x.location.startswith("quarantine/") for x in rows)  # no step-0 restart

    show = json.loads(run_cli("show", job.id, "--json", "--db", url, "--state", str(state), cwd=tmp_path).stdout)
    assert all(c["quarantined"] and c["present"] for c in show["checkpoints"])

    # A plain retry cannot change the outcome: it fails again at once, and still does not start over.
    assert run_cli("retry", job.id, "--db", url, "--state", str(state), cwd=tmp_path).returncode == 0
    work()
    r = row()
    assert (r.status, r.failures) == ("failed", 1) and "refused in an earlier attempt" in r.error
    assert len(list_checkpoints(queue, job.id)) == 2

    # --from-scratch is the explicit way: the job runs from step 0; the evidence stays.
    proc = run_cli("retry", "--from-scratch", job.id, "--db", url, "--state", str(state), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    work()
    r = row()
    assert r.status == "done" and r.result["steps"] == 5 and r.result["resumed_from"] is None, r.error
    assert sorted(p.name for p in (state / "quarantine" / "s" / job.id).iterdir()) == sorted(names)
    assert not marker.exists()
    db.dispose()


def test_the_summary_of_a_refused_checkpoint_traceback_names_the_file():
    # A kind that lets the error out as a traceback: the summary is its exception line, not the hint.
    error = RefusedCheckpoint(
        "checkpoint seq-000000003.ab.ckpt of job j1",
        "a bare pickle (protocol 4), not a torch.save file",
        sha256="ab" * 32,
        quarantine="quarantine/s/j1/seq-000000003.ab.ckpt",
        job_id="j1",
    )
    trace = (
        "Traceback (most recent call last):\n"
        '  File "/x/noop.py", line 28, in run\n'
        "    state = ctx.restore()\n"
        f"sweeper.errors.RefusedCheckpoint: {error}\n"
    )
    summary = error_summary(trace)
    assert summary.startswith("sweeper.errors.RefusedCheckpoint: checkpoint seq-000000003.ab.ckpt of job j1 refused")
    assert "protocol 4" in summary and "quarantine/s/j1/" in summary


def test_a_tampered_file_only_the_directory_scan_finds_is_quarantined_too(claimed, state_dir, marker):
    """Mirrored mode: a checkpoint file newer than the last database snapshot has no row to flag."""
    queue, job = claimed
    store = CheckpointStore(queue, state_dir, "files")
    store.save(job.lease, "s", {"step": 1})
    with queue.db.write() as conn:  # the snapshot was taken before the checkpoint was recorded
        conn.execute(checkpoints.delete().where(checkpoints.c.job_id == job.id))
    data = payload("protocol-4", marker)
    (old,) = (state_dir / "checkpoints" / "s" / job.id).iterdir()
    old.unlink()
    planted = old.with_name(f"seq-000000001.{hashlib.sha256(data).hexdigest()}.ckpt")
    planted.write_bytes(data)
    with pytest.raises(RefusedCheckpoint, match=planted.name):
        store.restore("s", job.id, scan=True)
    assert not planted.exists() and (state_dir / "quarantine" / "s" / job.id / planted.name).read_bytes() == data
    with pytest.raises(RefusedCheckpoint, match="refused in an earlier attempt"):
        store.restore("s", job.id, scan=True)  # the file is gone from the scan; the event remembers
    assert not marker.exists()
