"""Fixtures of the race suite: worker queues on one database, and a lock watch on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .kit import LockWatch, Workers


@pytest.fixture
def workers(db_url: str) -> Iterator[Workers]:
    w = Workers(db_url)
    yield w
    w.close()


@pytest.fixture
def watch(db_url: str) -> Iterator[LockWatch | None]:
    if not db_url.startswith("postgresql"):
        yield None
        return
    w = LockWatch(db_url)
    yield w
    w.close()
