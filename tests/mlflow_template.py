"""An empty MLflow store created once per test session: creating its tables costs a worker seconds.

A test module wraps `template()` in a fixture and copies the store into a state directory
(state/mlflow.db) with `install()` before it starts workers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

_created: list[Path] = []


def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _created:
        from mlflow.tracking import MlflowClient

        path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()
        _created.append(path)
    return _created[0]


def install(template: Path, state: Path) -> None:
    state.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, state / "mlflow.db")
