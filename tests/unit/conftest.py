"""The unit tier: in-process tests on temporary SQLite files, run on every save (`pytest tests/unit`).

No subprocess, no worker process, no PostgreSQL, no network: a test here that starts a process
fails at once (the guard below), so the tier stays fast and means what it says. Tests that need a
real process, signals, PostgreSQL or the whole pipeline live one level up in tests/.
"""

from __future__ import annotations

import multiprocessing.process
import subprocess
from collections.abc import Iterator

import pytest


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("the unit tier starts no process: move this test to tests/ or run it in-process")


@pytest.fixture(autouse=True)
def no_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse)
    yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a PostgreSQL test in this tier (the `postgres` marker or the pg fixtures)."""
    for item in items:
        if "tests/unit/" not in item.nodeid:
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("postgres") or fixtures & {"pg_url", "pg_server", "db_url"}:
            raise pytest.UsageError(f"{item.nodeid}: the unit tier runs on SQLite only; move it to tests/")
