"""`sweeper show JOB`: params written and resolved, attempts from the events, metrics, files, the error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from sweeper.store.checkpoints import ArtifactStore, CheckpointStore
from sweeper.views.show import collect_job, render
from tests.conftest import run_cli, run_grid
from tests.statuszoo import build_zoo

GRID = """\
sweep: showcase
stages:
  search:
    kind: noop
    params: {steps: 3}
    grid:
      value: [0.2, 0.9]
      fail_times: [1]
  follow:
    kind: noop
    needs: [search]
    params:
      upstream: {best_of: search, metric: value, mode: max}
"""


def draw(detail, width: int = 100) -> str:
    console = Console(record=True, width=width)
    console.print(render(detail))
    return console.export_text()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """A real sweep run by a real worker: each search job fails once, then succeeds."""
    tmp = tmp_path_factory.mktemp("show")
    return tmp, run_grid(tmp, GRID)


def _ids(tmp: Path, db: str) -> dict[str, str]:
    rows = json.loads(run_cli("status", "--json", "--db", db, "--by", "value", cwd=tmp).stdout)["leaderboard"]["rows"]
    return {r["label"] or r["stage"]: r["id"] for r in rows}


def test_show_rebuilds_attempts_from_events_and_lists_checkpoints(finished):
    tmp, db = finished
    ids = _ids(tmp, db)
    job = ids["value=0.9 fail_times=1"]
    proc = run_cli("show", job[:6], "--db", db, "--state", str(tmp / "state"), cwd=tmp, COLUMNS="100")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"job {job}" in text and "showcase / search" in text
    assert re.search(r"done\s+attempt 2 · failures 1/3", text)
    attempt1 = next(line for line in text.splitlines() if re.match(r"1\s+\S+:\d+:", line))
    attempt2 = next(line for line in text.splitlines() if re.match(r"2\s+\S+:\d+:", line))
    assert "failed, will retry: failure 1/3" in attempt1 and "failing attempt 1 of 1" in " ".join(text.split())
    assert re.search(r"\s3\s+done\s*$", attempt2)  # three checkpoints in the attempt that finished
    assert "checkpoints" in text and "seq 3" in text and "(missing on this machine)" not in text
    for metric in ("steps", "attempt", "value"):
        assert re.search(rf"^{metric}\s", text, re.M)


def test_show_names_the_upstream_job_a_handoff_came_from(finished):
    tmp, db = finished
    ids = _ids(tmp, db)
    best, follow = ids["value=0.9 fail_times=1"], ids["follow"]
    proc = run_cli("show", follow, "--db", db, cwd=tmp, COLUMNS="160")
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("upstream"))
    assert '"best_of": "search"' in row and f"job {best} (search)" in row and row.rstrip().endswith(best)
    doc = json.loads(run_cli("show", follow, "--json", "--db", db, cwd=tmp).stdout)
    assert doc["schema"] == "sweeper.job/1"
    assert doc["provenance"] == {"upstream": best}
    assert doc["params_resolved"]["upstream"]["job"] == best
    assert [a["outcome"] for a in doc["attempts"]] == ["done"]
    assert [e["type"] for e in doc["events"]][:2] == ["enqueued", "unblocked"]


def test_show_of_a_failed_job_prints_the_traceback(db_url, tmp_path):
    zoo = build_zoo(db_url)
    try:
        text = draw(collect_job(zoo.db, zoo.ids["failed"]))
    finally:
        zoo.close()
    assert "failed  attempt 1 · failures 1/3" in text
    assert "failed: not retryable" in text
    assert "Traceback (most recent call last)" in text
    assert text.count("ValueError: kernel 7 is larger than the 5x5 feature map after conv1") >= 2


def test_show_of_a_running_job_has_progress_lease_and_its_files(db_url, tmp_path):
    zoo = build_zoo(db_url)
    try:
        lease = zoo.running_lease
        state = tmp_path / "state"
        CheckpointStore(zoo.queue.db, state, fence=zoo.queue.in_lease).save(lease, "zoo", {"epoch": 2})
        note = tmp_path / "notes.json"
        note.write_text('{"ok": true}')
        ArtifactStore(zoo.queue.db, state, mode="db", fence=zoo.queue.in_lease).put(lease, "zoo", note, "notes.json")
        detail = collect_job(zoo.db, zoo.ids["running"], state)
        text = draw(detail)
    finally:
        zoo.close()
    assert "progress 40% epoch 2/5 loss 0.412 on host-a:101:aaaa" in text and "lease" in text
    assert re.search(r"1\s+host-a:101:aaaa.*\s1\s+running", text)
    assert [c.name for c in detail.checkpoints] == ["seq 1"] and detail.checkpoints[0].present is True
    art = detail.artifacts[0]
    assert (art.name, art.where, art.size) == ("notes.json", "database", 12)
    assert "notes.json" in text and "database" in text


def test_show_of_a_blocked_job_says_when_handoffs_resolve(sqlite_url):
    zoo = build_zoo(sqlite_url)
    try:
        text = draw(collect_job(zoo.db, zoo.ids["blocked"]), width=120)
    finally:
        zoo.close()
    assert "blocked" in text and "hand-offs resolve when every upstream job has finished" in text


def test_show_rejects_unknown_and_ambiguous_ids(finished):
    tmp, db = finished
    proc = run_cli("show", "ffffffff", "--db", db, cwd=tmp)
    assert proc.returncode == 2 and "no job with id 'ffffffff'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("show", "ab", "--db", db, cwd=tmp)
    assert proc.returncode == 2 and "too short" in proc.stderr
