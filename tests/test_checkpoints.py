"""Checkpoint stores: atomic files or database blobs, verified by sha256, with fallback."""

from __future__ import annotations

import io
import os
import pickle
import textwrap
from pathlib import Path

import pytest
import torch

from sweeper.errors import CheckpointError, LeaseLost
from sweeper.grid.spec import parse_spec
from sweeper.store.checkpoints import (
    ArtifactStore,
    CheckpointStore,
    list_artifacts,
    list_checkpoints,
    record_artifact,
    record_checkpoint,
    scan_checkpoint_dir,
)
from sweeper.store.db import open_database
from sweeper.store.queue import Queue


@pytest.fixture
def claimed(db_url, state_dir):
    db = open_database(db_url)
    queue = Queue(db)
    queue.enqueue(parse_spec(textwrap.dedent("sweep: s\nstages:\n  a: {kind: noop}\n"), "g.yaml"))
    job = queue.claim("w", 30)
    yield queue, job
    db.dispose()


@pytest.mark.parametrize("mode", ["files", "db"])
def test_restore_returns_the_newest_checkpoint_bit_exactly(claimed, state_dir, mode):
    queue, job = claimed
    store = CheckpointStore(queue.db, state_dir, mode, fence=queue.in_lease)
    weights = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    store.save(job.lease, "s", {"step": 1, "w": weights * 0})
    store.save(job.lease, "s", {"step": 2, "w": weights})
    got = store.restore("s", job.id)
    assert got.state["step"] == 2 and torch.equal(got.state["w"], weights)


def test_only_the_last_two_checkpoint_files_are_kept(claimed, state_dir):
    queue, job = claimed
    store = CheckpointStore(queue.db, state_dir, "files", fence=queue.in_lease)
    for step in range(5):
        store.save(job.lease, "s", {"step": step})
    assert len(scan_checkpoint_dir(store.job_dir("s", job.id))) == 2
    assert len(list_checkpoints(queue.db, job.id)) == 2


def test_truncated_checkpoint_falls_back_to_the_previous_one(claimed, state_dir):
    queue, job = claimed
    warnings: list[str] = []
    store = CheckpointStore(queue.db, state_dir, "files", warn=warnings.append, fence=queue.in_lease)
    store.save(job.lease, "s", {"step": 1, "w": torch.ones(1000)})
    store.save(job.lease, "s", {"step": 2, "w": torch.ones(1000) * 2})
    newest = scan_checkpoint_dir(store.job_dir("s", job.id))[0][0]
    with open(newest, "r+b") as f:  # a crash mid-write on a filesystem without atomic rename
        f.truncate(os.path.getsize(newest) // 2)
    assert store.restore("s", job.id).state["step"] == 1
    assert any("fails its sha256" in w for w in warnings)


def test_corrupted_blob_in_the_database_falls_back_too(claimed, state_dir):
    queue, job = claimed
    store = CheckpointStore(queue.db, state_dir, "db", fence=queue.in_lease)
    store.save(job.lease, "s", {"step": 1})
    store.save(job.lease, "s", {"step": 2})
    newest = list_checkpoints(queue.db, job.id)[0]
    with queue.db.write() as conn:
        from sweeper.store.db import checkpoints

        conn.execute(checkpoints.update().where(checkpoints.c.id == newest.id).values(blob=b"garbage"))
    assert store.restore("s", job.id).state["step"] == 1


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sweeper-pwned",))


def test_malicious_pickle_checkpoint_is_refused_and_does_not_run(claimed, state_dir, tmp_path):
    queue, job = claimed
    marker = Path("/tmp/sweeper-pwned")
    marker.unlink(missing_ok=True)
    buf = io.BytesIO()
    torch.save({"step": 1, "payload": _Evil()}, buf, pickle_module=pickle)
    import hashlib

    data = buf.getvalue()
    record_checkpoint(
        queue.in_lease, job.lease, sha256=hashlib.sha256(data).hexdigest(), size=len(data), location=None, blob=data
    )
    with pytest.raises(CheckpointError, match="refused"):
        CheckpointStore(queue.db, state_dir, "db", fence=queue.in_lease).restore("s", job.id)
    assert not marker.exists()


def test_a_zombie_leaves_no_checkpoint_file_behind(claimed, state_dir):
    queue, job = claimed
    store = CheckpointStore(queue.db, state_dir, "files", fence=queue.in_lease)
    queue.cancel([job.id])
    with pytest.raises(LeaseLost):
        store.save(job.lease, "s", {"step": 1})
    assert scan_checkpoint_dir(store.job_dir("s", job.id)) == []


def test_artifacts_are_verified_by_sha256(claimed, state_dir, tmp_path):
    queue, job = claimed
    store = ArtifactStore(queue.db, state_dir, "files", fence=queue.in_lease)
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights" * 100)
    info = store.put(job.lease, "s", src, "model.bin")
    path = store.fetch(job.id, "model.bin", info)
    assert path.read_bytes() == src.read_bytes()
    path.write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="fails its sha256"):
        store.fetch(job.id, "model.bin", info)


@pytest.mark.parametrize("mode", ["files", "db"])
def test_a_store_without_a_fence_reads_and_refuses_to_write(claimed, state_dir, tmp_path, mode):
    """What the read-only report holds: the database and no fence. It fetches verified artifacts and
    restores checkpoints; a write is refused before anything reaches the disk or the database."""
    queue, job = claimed
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights" * 100)
    info = ArtifactStore(queue.db, state_dir, mode, fence=queue.in_lease).put(job.lease, "s", src, "model.bin")
    CheckpointStore(queue.db, state_dir, mode, fence=queue.in_lease).save(job.lease, "s", {"step": 7})

    artifacts = ArtifactStore(queue.db, state_dir, mode)
    checkpoints = CheckpointStore(queue.db, state_dir, mode)
    assert artifacts.fetch(job.id, "model.bin", info).read_bytes() == src.read_bytes()
    assert checkpoints.restore("s", job.id).state == {"step": 7}
    files_before = _files(state_dir)
    with pytest.raises(TypeError, match="no fence"):
        artifacts.put(job.lease, "s", src, "other.bin")
    with pytest.raises(TypeError, match="no fence"):
        checkpoints.save(job.lease, "s", {"step": 8})
    assert [a.name for a in list_artifacts(queue.db, [job.id])] == ["model.bin"]
    assert [c.name for c in list_checkpoints(queue.db, job.id)] == ["1"]
    assert _files(state_dir) == files_before


def _files(state_dir: Path) -> list[Path]:
    """Every file under the state directory but the queue database's own."""
    return sorted(p for p in state_dir.rglob("*") if p.is_file() and not p.name.startswith("queue.db"))


def test_the_report_view_reads_artifacts_without_building_a_queue(claimed, state_dir, tmp_path, monkeypatch):
    from sweeper.store.results import SweepView

    queue, job = claimed
    src = tmp_path / "curve.json"
    src.write_text('{"loss": [1.0, 0.5]}')
    ArtifactStore(queue.db, state_dir, "files", fence=queue.in_lease).put(job.lease, "s", src, "curve.json")

    def no_queue(*_args, **_kwargs):
        raise AssertionError("the read-only view built a Queue")

    monkeypatch.setattr(Queue, "__init__", no_queue)
    view = SweepView(queue.db, state_dir, "s")
    assert view.artifact_names(job.id) == ["curve.json"]
    assert view.read_json(job.id, "curve.json") == {"loss": [1.0, 0.5]}


def _record_raw(queue, job, data: bytes, location: str | None = None) -> None:
    """What any writer of the queue could record: bytes (or a location) with a matching sha256."""
    import hashlib

    blob = None if location else data
    digest = hashlib.sha256(data).hexdigest()
    record_checkpoint(queue.in_lease, job.lease, sha256=digest, size=len(data), location=location, blob=blob, keep=10)


@pytest.mark.parametrize("mode", ["files", "db"])
def test_checkpoints_are_ordered_by_seq_not_by_the_writers_clock(claimed, state_dir, mode, monkeypatch):
    queue, job = claimed
    store = CheckpointStore(queue.db, state_dir, mode, fence=queue.in_lease)
    store.save(job.lease, "s", {"step": 1})
    # The job moves to a machine whose clock is an hour behind; its checkpoint is still the newest.
    import time

    real_time, real_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() - 3600 * 10**9)
    assert store.save(job.lease, "s", {"step": 2}) == 2
    monkeypatch.undo()
    got = store.restore("s", job.id)
    assert (got.state["step"], got.seq) == (2, 2)


def test_a_file_the_database_does_not_know_yet_is_newer_and_later_saves_stay_newer(claimed, state_dir):
    """Mirrored mode: the database snapshot lags the checkpoint files on the mount."""
    queue, job = claimed
    store = CheckpointStore(queue.db, state_dir, "files", fence=queue.in_lease)
    store.save(job.lease, "s", {"step": 1})
    store.save(job.lease, "s", {"step": 2})
    with queue.db.write() as conn:  # the snapshot was taken before seq 2 was recorded
        from sweeper.store.db import checkpoints

        conn.execute(checkpoints.delete().where(checkpoints.c.seq == 2))
    got = store.restore("s", job.id, scan=True)
    assert (got.state["step"], got.source) == (2, "directory scan")
    # The next save sorts after the file the database never knew, not before it.
    assert store.save(job.lease, "s", {"step": 3}) == 3
    assert store.restore("s", job.id, scan=True).state["step"] == 3


def test_a_checkpoint_that_passes_its_sha256_but_is_no_torch_file_is_refused_and_falls_back(claimed, state_dir):
    queue, job = claimed
    warnings: list[str] = []
    store = CheckpointStore(queue.db, state_dir, "db", warn=warnings.append, fence=queue.in_lease)
    store.save(job.lease, "s", {"step": 1})
    # Bytes whose sha256 matches were written on purpose; encode() writes nothing but torch.save files.
    _record_raw(queue, job, b"not a torch checkpoint at all")
    got = store.restore("s", job.id)
    assert got.state["step"] == 1 and got.seq == 1
    assert any("refused as possibly malicious" in w and "trying the previous one" in w for w in warnings)
    assert list((state_dir / "quarantine" / "s" / job.id).iterdir())


def test_a_refused_checkpoint_falls_back_to_a_good_previous_one(claimed, state_dir):
    queue, job = claimed
    warnings: list[str] = []
    store = CheckpointStore(queue.db, state_dir, "db", warn=warnings.append, fence=queue.in_lease)
    store.save(job.lease, "s", {"step": 1})
    buf = io.BytesIO()
    torch.save({"step": 2, "payload": _Evil()}, buf, pickle_module=pickle)
    _record_raw(queue, job, buf.getvalue())
    assert store.restore("s", job.id).state["step"] == 1
    assert any("refused" in w for w in warnings)
    assert not Path("/tmp/sweeper-pwned").exists()


# -- rows that name paths outside the state directory ------------------------------------------


@pytest.mark.parametrize("where", ["../../victim.ckpt", "ABSOLUTE", "checkpoints/s/otherjob000/x.ckpt"])
def test_a_stored_location_outside_the_jobs_directory_is_never_read_or_deleted(claimed, state_dir, where):
    queue, job = claimed
    victim = state_dir.parent / "victim.ckpt"
    from sweeper.store.checkpoints import encode

    data = encode({"step": 99})
    victim.write_bytes(data)
    location = str(victim) if where == "ABSOLUTE" else where
    if where.startswith("checkpoints/"):  # another job's file inside the state directory
        victim = state_dir / where
        victim.parent.mkdir(parents=True)
        victim.write_bytes(data)
    _record_raw(queue, job, data, location=location)
    warnings: list[str] = []
    store = CheckpointStore(queue.db, state_dir, "files", keep=1, warn=warnings.append, fence=queue.in_lease)
    assert store.restore("s", job.id) is None  # the crafted row is skipped, not loaded
    store.save(job.lease, "s", {"step": 1})  # prunes the crafted row: its file must survive
    assert victim.read_bytes() == data
    assert any("not a file of that job" in w or "absolute" in w for w in warnings), warnings


def test_a_symlink_under_the_state_directory_that_leads_out_is_refused(claimed, state_dir, tmp_path):
    from sweeper.errors import UnsafePath

    queue, job = claimed
    outside = tmp_path / "outside"
    outside.mkdir()
    (state_dir / "checkpoints" / "s").mkdir(parents=True)
    (state_dir / "checkpoints" / "s" / job.id).symlink_to(outside)
    with pytest.raises(UnsafePath, match="outside the state directory"):
        CheckpointStore(queue.db, state_dir, "files", fence=queue.in_lease).save(job.lease, "s", {"step": 1})
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", ["../escape.bin", "/etc/escape.bin", "..", ".hidden", "a\x00b", ""])
def test_an_artifact_name_that_is_not_a_plain_file_name_is_refused(claimed, state_dir, tmp_path, name):
    from sweeper.errors import UnsafePath

    queue, job = claimed
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights")
    for mode in ("files", "db"):
        with pytest.raises(UnsafePath):
            ArtifactStore(queue.db, state_dir, mode, fence=queue.in_lease).put(job.lease, "s", src, name)
    assert not (state_dir.parent / "escape.bin").exists() and list_artifacts(queue.db, [job.id]) == []


def test_an_artifact_row_pointing_outside_is_not_fetched(claimed, state_dir, tmp_path):
    from sweeper.errors import UnsafePath

    queue, job = claimed
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not yours")
    import hashlib

    digest = hashlib.sha256(b"not yours").hexdigest()
    record_artifact(queue.in_lease, job.lease, name="model.bin", sha256=digest, size=9, location=str(secret), blob=None)
    with pytest.raises(UnsafePath, match="absolute"):
        ArtifactStore(queue.db, state_dir, "files", fence=queue.in_lease).fetch(job.id, "model.bin")
    record_artifact(queue.in_lease, job.lease, name="m2", sha256="../../x", size=9, location=None, blob=b"not yours")
    with pytest.raises(UnsafePath, match="malformed sha256"):
        ArtifactStore(queue.db, state_dir, "db", fence=queue.in_lease).fetch(job.id, "m2")
