"""Checkpoint stores: atomic files or database blobs, verified by sha256, with fallback."""

from __future__ import annotations

import io
import os
import pickle
import textwrap
from pathlib import Path

import pytest
import torch

from sweeper.checkpoints import ArtifactStore, CheckpointStore, scan_checkpoint_dir
from sweeper.db import open_database
from sweeper.errors import CheckpointError, LeaseLost
from sweeper.queue import Queue
from sweeper.spec import parse_spec


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
    store = CheckpointStore(queue, state_dir, mode)
    weights = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    store.save(job.lease, "s", {"step": 1, "w": weights * 0})
    store.save(job.lease, "s", {"step": 2, "w": weights})
    got = store.restore("s", job.id)
    assert got.state["step"] == 2 and torch.equal(got.state["w"], weights)


def test_only_the_last_two_checkpoint_files_are_kept(claimed, state_dir):
    queue, job = claimed
    store = CheckpointStore(queue, state_dir, "files")
    for step in range(5):
        store.save(job.lease, "s", {"step": step})
    assert len(scan_checkpoint_dir(store.job_dir("s", job.id))) == 2
    assert len(queue.list_checkpoints(job.id)) == 2


def test_truncated_checkpoint_falls_back_to_the_previous_one(claimed, state_dir):
    queue, job = claimed
    warnings: list[str] = []
    store = CheckpointStore(queue, state_dir, "files", warn=warnings.append)
    store.save(job.lease, "s", {"step": 1, "w": torch.ones(1000)})
    store.save(job.lease, "s", {"step": 2, "w": torch.ones(1000) * 2})
    newest = scan_checkpoint_dir(store.job_dir("s", job.id))[0][0]
    with open(newest, "r+b") as f:  # a crash mid-write on a filesystem without atomic rename
        f.truncate(os.path.getsize(newest) // 2)
    assert store.restore("s", job.id).state["step"] == 1
    assert any("fails its sha256" in w for w in warnings)


def test_corrupted_blob_in_the_database_falls_back_too(claimed, state_dir):
    queue, job = claimed
    store = CheckpointStore(queue, state_dir, "db")
    store.save(job.lease, "s", {"step": 1})
    store.save(job.lease, "s", {"step": 2})
    newest = queue.list_checkpoints(job.id)[0]
    with queue.db.write() as conn:
        from sweeper.db import checkpoints

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
    queue.record_checkpoint(
        job.lease, sha256=hashlib.sha256(data).hexdigest(), size=len(data), location=None, blob=data
    )
    with pytest.raises(CheckpointError, match="refused"):
        CheckpointStore(queue, state_dir, "db").restore("s", job.id)
    assert not marker.exists()


def test_a_zombie_leaves_no_checkpoint_file_behind(claimed, state_dir):
    queue, job = claimed
    store = CheckpointStore(queue, state_dir, "files")
    queue.cancel([job.id])
    with pytest.raises(LeaseLost):
        store.save(job.lease, "s", {"step": 1})
    assert scan_checkpoint_dir(store.job_dir("s", job.id)) == []


def test_artifacts_are_verified_by_sha256(claimed, state_dir, tmp_path):
    queue, job = claimed
    store = ArtifactStore(queue, state_dir, "files")
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights" * 100)
    info = store.put(job.lease, "s", src, "model.bin")
    path = store.fetch(job.id, "model.bin", info)
    assert path.read_bytes() == src.read_bytes()
    path.write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="fails its sha256"):
        store.fetch(job.id, "model.bin", info)
