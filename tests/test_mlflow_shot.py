"""`sweeper report --mlflow-screenshot`: a real `mlflow server` on a real MLflow store, photographed
by real headless Chromium (installed by .ci/run), and the clear errors when it cannot be done."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from .conftest import run_cli

GRID = textwrap.dedent(
    """
    sweep: shot
    stages:
      search:
        kind: noop
        grid: {value: [1, 2, 3]}
    """
)


@pytest.fixture(scope="module")
def tracked_sweep(tmp_path_factory) -> Path:
    """Three finished jobs logged to a real MLflow store under state/."""
    root = tmp_path_factory.mktemp("shot")
    (root / "grid.yaml").write_text(GRID)
    assert run_cli("enqueue", "grid.yaml", cwd=root).returncode == 0
    done = run_cli("work", "--workers", "1", "--retry-backoff", "0", cwd=root, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "state" / "mlflow.db").is_file()
    return root


@pytest.mark.slow
def test_the_report_shows_a_screenshot_of_the_mlflow_runs_table(tracked_sweep):
    if shutil.which("chromium") is None:
        pytest.fail("Chromium is not installed: apt-get install chromium (.ci/run does)")
    root = tracked_sweep
    done = run_cli("report", "--out", "rep", "--mlflow-screenshot", "--no-plots", cwd=root, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    shot = root / "rep" / "mlflow-runs.png"
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == (2000, 1100)
        colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
    # a rendered page (text, table lines, the sidebar), not a blank or one-colour error page
    assert colours is not None and len(colours) > 50, "the screenshot is blank"
    report = (root / "rep" / "report.md").read_text()
    assert "![The MLflow runs table](mlflow-runs.png)" in report


def test_without_chromium_the_report_says_how_to_get_it_and_writes_nothing(tracked_sweep, tmp_path):
    out = tmp_path / "rep"
    done = run_cli(
        "report", "--out", str(out), "--mlflow-screenshot", cwd=tracked_sweep, PATH=str(tmp_path / "empty-bin")
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "needs Chromium" in done.stderr and "apt-get install chromium" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "report.md").exists()


def test_a_wrong_sweeper_chromium_is_named(tracked_sweep, tmp_path):
    done = run_cli(
        "report", "--out", str(tmp_path / "rep"), "--mlflow-screenshot", cwd=tracked_sweep,
        SWEEPER_CHROMIUM="/nonexistent/chrome",
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "SWEEPER_CHROMIUM=/nonexistent/chrome" in done.stderr and "Traceback" not in done.stderr
