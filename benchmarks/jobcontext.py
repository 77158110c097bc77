"""A real JobContext outside a worker, for benchmarks that time job code in-process.

One noop job enqueued into a fresh SQLite queue in a scratch directory and claimed: checkpoints go
through the real CheckpointStore (atomic files, sha256, database record), tracking is off.
"""

from __future__ import annotations

from pathlib import Path

from sweeper.context import JobContext
from sweeper.grid.spec import parse_spec
from sweeper.store.checkpoints import ArtifactStore, CheckpointStore
from sweeper.store.db import open_database
from sweeper.store.queue import Queue


class ScratchJob:
    def __init__(self, root: Path) -> None:
        self.state_dir = root / "state"
        self.db = open_database(f"sqlite:///{self.state_dir / 'queue.db'}", create=True)
        self.queue = Queue(self.db)
        self.queue.enqueue(parse_spec("sweep: bench\nstages:\n  a: {kind: noop}\n", "bench.yaml"))
        self.claimed = self.queue.claim("bench", 3600)

    def context(self) -> JobContext:
        return JobContext(
            job=self.claimed,
            queue=self.queue,
            checkpoints=CheckpointStore(self.queue.db, self.state_dir, "files", fence=self.queue.in_lease),
            artifacts=ArtifactStore(self.queue.db, self.state_dir, "files", fence=self.queue.in_lease),
            state_dir=self.state_dir,
            log=lambda _msg: None,
        )

    def close(self) -> None:
        self.db.dispose()
