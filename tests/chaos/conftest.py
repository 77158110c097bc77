"""Chaos summaries go to the end of the pytest output, so they show in CI logs run with -q."""

from __future__ import annotations

from pathlib import Path

import pytest

SUMMARIES: list[str] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if SUMMARIES:
        terminalreporter.section("chaos summary")
        for text in SUMMARIES:
            terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def chaos_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory kept for the session: the empty MLflow store template lives here."""
    return tmp_path_factory.mktemp("chaos-cache")
