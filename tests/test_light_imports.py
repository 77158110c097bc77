"""Job code stands on its own: the ML library of jobs/ raises JobFailed and loads model artifacts
without pulling in the orchestrator's queue, and the CLI's read commands stay free of torch and MLflow.

Each check runs in a fresh interpreter: in this one, other tests have imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def loaded_by(statement: str, prefixes: tuple[str, ...]) -> list[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("module", ["jobs.ml.data", "jobs.ml.model", "jobs.ml.training", "jobs.kinds.params"])
def test_the_ml_library_does_not_import_the_queue(module):
    loaded = loaded_by(f"import {module}", ("sweeper.store.queue", "sweeper.store.db", "sweeper.running"))
    assert loaded == [], f"import {module} loads {loaded}"


def test_the_job_api_still_offers_what_job_kinds_import():
    loaded = loaded_by(
        "from sweeper.context import Interrupted, JobContext, JobFailed, LeaseLost, load_plain", ("sweeper.context",)
    )
    assert loaded == ["sweeper.context"]
