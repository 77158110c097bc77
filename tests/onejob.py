"""One claimed job on a real SQLite queue, for tests that drive the training loop by hand."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sweeper.context import JobContext
from sweeper.grid.spec import parse_spec
from sweeper.store.checkpoints import ArtifactStore, CheckpointStore
from sweeper.store.db import open_database
from sweeper.store.queue import Queue


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """What `sweeper work --threads-per-worker 1` sets; determinism holds for a fixed thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Job:
    """One claimed job on a real SQLite queue; each attempt() is a fresh JobContext, as after a restart."""

    def __init__(self, root: Path) -> None:
        self.state_dir = root / "state"
        self.db = open_database(f"sqlite:///{self.state_dir / 'queue.db'}", create=True)
        self.queue = Queue(self.db)
        self.queue.enqueue(parse_spec(textwrap.dedent("sweep: s\nstages:\n  a: {kind: noop}\n"), "g.yaml"))
        self.claimed = self.queue.claim("test-worker", 300)
        self.store = CheckpointStore(self.queue.db, self.state_dir, "files", fence=self.queue.in_lease)

    def attempt(self) -> JobContext:
        return JobContext(
            job=self.claimed,
            queue=self.queue,
            checkpoints=self.store,
            artifacts=ArtifactStore(self.queue.db, self.state_dir, "files", fence=self.queue.in_lease),
            state_dir=self.state_dir,
            log=lambda _msg: None,
        )

    def newest_checkpoint_file(self) -> Path:
        return max((self.state_dir / "checkpoints").rglob("*.ckpt"), key=lambda p: p.name)
