"""`sweeper report`: a finished noop sweep becomes report.md with the right top-3 tables and valid PNGs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from sweeper.errors import CheckpointError
from sweeper.grid.ranking import Metric, default_mode
from sweeper.store.db import open_database
from sweeper.store.results import SweepView, load_jobs
from sweeper.views.markdown import fmt
from sweeper.views.report import ReportOptions, write_report
from tests.conftest import run_cli, run_grid

# value is reported as a metric; steps is both a param and a metric (the "cost" axis).
GRID = """\
sweep: report-demo
description: noop jobs whose value is their score
stages:
  search:
    kind: noop
    grid:
      value: [0.3, 0.9, 0.6, 0.1]
      steps: [1, 3]
  pick:
    kind: noop
    needs: [search]
    params: {upstream: {best_of: search, metric: value}}
  never:
    kind: noop
    needs: [search]
    params: {fail: true}
"""

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("report")
    return tmp, run_grid(tmp, GRID)


def top_ids(markdown: str, heading: str) -> list[str]:
    """The job ids of the `job` row of the top-k table under `heading`."""
    block = markdown[markdown.index(heading) :]
    row = next(line for line in block.splitlines() if line.startswith("| job |"))
    return re.findall(r"`([0-9a-f]{12})`", row)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG, path
    with Image.open(path) as img:
        img.load()  # decodes every pixel: a truncated file fails here
        assert img.width > 100 and img.height > 100


def test_report_has_top3_tables_in_order_and_valid_pngs(sweep, tmp_path):
    tmp, db = sweep
    out = tmp_path / "rep"
    proc = run_cli(
        "report", "--out", str(out), "--metric", "value", "--second", "steps:min", "--db", db,
        "--state", str(tmp / "state"), cwd=tmp,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "report.md" in proc.stdout
    md = (out / "report.md").read_text()

    database = open_database(db, create=False)
    try:
        jobs = {(j.params["value"], j.params["steps"]): j.id for j in load_jobs(database, stage="search")}
    finally:
        database.dispose()
    # By value (max): 0.9 with steps 1 then 3 (ties go in queue order), then 0.6 with 1 step.
    assert top_ids(md, "**Top 3 by value**") == [jobs[(0.9, 1)], jobs[(0.9, 3)], jobs[(0.6, 1)]]
    # By steps (min): the one-step jobs in queue order.
    assert top_ids(md, "**Top 3 by steps**") == [jobs[(0.3, 1)], jobs[(0.9, 1)], jobs[(0.6, 1)]]
    top_block = md[md.index("**Top 3 by value**") :].split("\n\n")[1]
    assert "| value | 0.9 | 0.9 | 0.6 |" in top_block and "| steps | 1 | 3 | 1 |" in top_block

    assert "## Stage `search`" in md and "All 8 jobs sorted by value" in md
    assert "## Stage `pick`" in md and "## Stage `never`" in md
    assert "_No job of this stage finished; nothing to show._" in md  # `never` failed: omitted with a note
    assert "noop job" in md and "was asked to fail" in md  # its failure is listed

    figures = sorted(p.name for p in out.glob("*.png"))
    assert figures == ["pareto_search.png", "scatter_search_steps.png", "scatter_search_value.png"]
    for name in figures:
        assert f"![{name}]({name})" in md
        assert_png(out / name)


def test_report_without_the_metrics_lists_what_results_have(sweep, tmp_path):
    tmp, db = sweep
    out = tmp_path / "rep"
    proc = run_cli("report", "--out", str(out), "--no-plots", "--db", db, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert "No job reports test_accuracy or time_to_target_s" in md
    assert "their metrics: attempt, steps, value" in md
    assert not list(out.glob("*.png"))


def test_plugins_add_sections_and_a_failing_one_costs_only_itself(sweep, tmp_path):
    tmp, db = sweep
    out = tmp_path / "rep"
    args = ["report", "--out", str(out), "--metric", "value", "--second", "steps:min", "--no-plots", "--db", db]
    plugins = [
        "--plugin",
        "tests.reportkit:good",
        "--plugin",
        "tests.reportkit:boom",
        "--plugin",
        "tests.reportkit:liar",
    ]
    proc = run_cli(*args, *plugins, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert "## Values by job" in md and "9 jobs of sweep `report-demo` done." in md
    assert_png(out / "values.png")
    assert "## Plug-in `tests.reportkit:boom` failed" in md
    assert "RuntimeError: history.json is missing from every job of report-demo" in md
    assert "## Plug-in `tests.reportkit:liar` failed" in md and "ghost.png" in md
    assert "## Stage `search`" in md  # the generic part is all there
    assert "warning" in proc.stderr and "boom" in proc.stderr


def test_report_errors_are_clear(sweep, tmp_path):
    tmp, db = sweep
    proc = run_cli("report", "--out", str(tmp_path / "r"), "--sweep", "nope", "--db", db, cwd=tmp)
    assert proc.returncode == 2 and "no sweep named 'nope'" in proc.stderr and "report-demo" in proc.stderr
    proc = run_cli("report", "--out", str(tmp_path / "r"), "--plugin", "nosuch", "--db", db, cwd=tmp)
    assert proc.returncode == 2 and "no report plug-in named 'nosuch'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_report_api_gives_stages_jobs_provenance_and_figure_paths(sweep, tmp_path):
    """The view a plug-in gets: jobs in queue order, params, metrics, and figure paths in the output dir
    (a job without artifacts lists none; reading them is the next test)."""
    tmp, db = sweep
    database = open_database(db, create=False)
    try:
        view = SweepView(database, tmp / "state", "report-demo", tmp_path)
        assert [s.name for s in view.stages] == ["search", "pick", "never"]
        assert len(view.jobs("search")) == 8 and view.jobs("never") == []
        assert [j.stage for j in view.jobs("never", status="failed")] == ["never"]
        pick = view.jobs("pick")[0]
        best = next(j for j in view.jobs("search") if j.params_written == {"value": 0.9, "steps": 1})
        assert best.params == {"value": 0.9, "steps": 1}  # as the grid gave it
        assert best.recorded["value"] == 0.9 and best.recorded["checkpoint"] is True  # effective: defaults too
        assert pick.provenance["upstream"] == best.id  # the first job with the best value
        assert view.artifact_names(pick.id) == []
        assert view.figure_path("x.png") == tmp_path / "x.png"
        result = write_report(
            view, tmp_path, ReportOptions(Metric("value", "max"), Metric("steps", "min"), top=2, plugins=[])
        )
    finally:
        database.dispose()
    md = result.path.read_text()
    assert "**Top 2 by value**" in md and len(result.figures) == 3


ARTIFACT_GRID = """\
sweep: files
stages:
  out:
    kind: tests.kinds:artifacts
    params: {result: {accuracy: 0.9, classes: [1, 2]}, rows: [{epoch: 1, loss: 0.5}, {epoch: 2, loss: 0.25}]}
"""


def test_report_api_reads_a_jobs_artifacts_and_refuses_one_that_fails_its_sha256(tmp_path):
    """What a plug-in reads through the view are the files the job recorded, checked on the way."""
    db = run_grid(tmp_path, ARTIFACT_GRID)
    database = open_database(db, create=False)
    try:
        view = SweepView(database, tmp_path / "state", "files", tmp_path / "out")
        (job,) = view.jobs("out")
        assert sorted(view.artifact_names(job.id)) == ["result.json", "table.csv"]
        assert view.read_json(job.id, "result.json") == {"accuracy": 0.9, "classes": [1, 2]}
        assert view.read_csv(job.id, "table.csv") == [{"epoch": "1", "loss": "0.5"}, {"epoch": "2", "loss": "0.25"}]
        with database.read() as conn:
            (location,) = conn.execute(
                sa.text("select location from artifacts where job_id = :j and name = 'result.json'"), {"j": job.id}
            ).one()
        stored = tmp_path / "state" / location
        stored.write_text(stored.read_text().replace("0.9", "1.0"))  # the same size, other bytes
        with pytest.raises(CheckpointError, match="sha256"):
            SweepView(database, tmp_path / "state", "files", tmp_path / "out").read_json(job.id, "result.json")
    finally:
        database.dispose()


@pytest.mark.parametrize(
    "name, value, shown, mode",
    [
        ("total_train_s", 194.12, "194.1 s", "min"),
        ("images_per_s", 3091.5, "3092", "max"),  # a rate, not a duration
        ("test_accuracy", 0.9029, "90.29 %", "max"),
        ("params", 925190, "925,190", "min"),
    ],
)
def test_values_are_shown_with_their_unit_and_ranked_the_right_way(name, value, shown, mode):
    assert fmt(name, value) == shown
    assert default_mode(name) == mode
