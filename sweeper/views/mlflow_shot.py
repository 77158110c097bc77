"""A screenshot of the MLflow UI's runs table, for a report: `sweeper report --mlflow-screenshot`.

It starts `mlflow server` on the sweep's tracking store (bound to 127.0.0.1, a free port), opens
the sweep's experiment in headless Chromium on the saved runs view (tracking.VIEW_KEY: stage and
headline metrics as columns) and saves a PNG. Everything is local: the UI's pages ship inside the
mlflow package, so it works with no internet. The server is stopped whatever happens.

`take_stage_screenshots` photographs one table per stage on one server: the stage's runs only
(`tags.stage = '...'`), with the params that vary across them and the headline metrics as columns,
sorted by test accuracy (best first); for a stage whose runs have rows (child runs, such as a
prune job's steps), the rows expanded under their job, in step order, with their own params and
metrics as columns. Each table is an MLflow "shared view" saved as an experiment tag
(`mlflow.sharedViewState.sweeper-<stage>`), so opening the same URL in a browser shows the same
table. It works for any sweep: the columns come from what the runs logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.errors import UsageError
from sweeper.running.tracking import VIEW_KEY

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# The name Chromium reaches the local server by (mapped to 127.0.0.1 inside Chromium only). MLflow 3
# opens its Assistant panel over a quarter of the page when the UI is served from localhost or
# 127.0.0.1; under another host name the Assistant is off and the table gets the whole width.
SHOT_HOST = "sweeper-mlflow"
# Chromium renders on a virtual clock: this much page time for MLflow's JS to load and fetch the runs.
RENDER_BUDGET_MS = 20_000


def find_chromium() -> str | None:
    """$SWEEPER_CHROMIUM if set (UsageError when it is not a program), else the first of CHROMIUM_NAMES."""
    override = os.environ.get("SWEEPER_CHROMIUM")
    if override:
        found = shutil.which(override)
        if found is None:
            raise UsageError(f"SWEEPER_CHROMIUM={override} is not a program that can be run: fix or unset it")
        return found
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def take_screenshot(
    tracking_uri: str,
    experiment: str,
    out: Path,
    *,
    size: tuple[int, int] = (2000, 1100),
    start_timeout_s: float = 90.0,
) -> Path:
    """Save the runs table of MLflow experiment `experiment` to `out` (PNG); UsageError when it cannot."""
    chromium = _need_chromium()
    experiment_id = _experiment_id(tracking_uri, experiment)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _server(tracking_uri, start_timeout_s) as (port, tmp):
        url = f"http://{SHOT_HOST}:{port}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
        _chromium(chromium, url, out, size, tmp / "profile")
    return out


# Headline metrics, in this order, where a stage's runs logged them; rows get ROW_METRICS.
HEADLINE_METRICS = ("test_accuracy", "time_to_target_s", "images_to_target", "train_accuracy", "flops", "params")
ROW_METRICS = (
    "accuracy_before",
    "accuracy_after_prune",
    "accuracy_after_finetune",
    "pruning_drop",
    "controlled_drop",
    "control_accuracy",
    "flops",
)
MAX_PARAM_COLUMNS = 8


@dataclass(frozen=True)
class StageShot:
    """One stage's runs table: the saved view and the file it is photographed to."""

    stage: str
    file: str  # mlflow-<stage>.png
    view: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{VIEW_KEY}-{self.stage}"


def plan_stage_shots(tracking_uri: str, experiment: str) -> list[StageShot]:
    """A view per stage of the experiment, built from what its runs logged (see the module doc)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = _experiment_id(tracking_uri, experiment)
    runs = list(_all_runs(client, exp_id))
    stages: dict[str, list[Any]] = {}
    for run in runs:
        stage = run.data.tags.get("stage")
        if stage:
            stages.setdefault(stage, []).append(run)
    shots = []
    for stage, members in stages.items():
        jobs = [r for r in members if "mlflow.parentRunId" not in r.data.tags]
        rows = [r for r in members if "mlflow.parentRunId" in r.data.tags]
        shown = rows or jobs
        metrics = [m for m in (ROW_METRICS if rows else HEADLINE_METRICS) if any(m in r.data.metrics for r in shown)]
        columns = [
            "tags.`stage`",
            *(f"params.`{k}`" for k in _varying_params(shown)),
            *(f"metrics.`{m}`" for m in metrics),
        ]
        view: dict[str, Any] = {
            "searchFilter": f"tags.stage = '{stage}'",
            "orderByKey": "metrics.`step`" if rows else "metrics.`test_accuracy`",
            "orderByAsc": bool(rows),
            "selectedColumns": columns,
        }
        if rows:
            view["runsExpanded"] = {r.info.run_id: True for r in jobs}
        shots.append(StageShot(stage, f"mlflow-{_slug(stage)}.png", view))
    return shots


def _all_runs(client: Any, exp_id: str) -> Iterator[Any]:
    token = None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _varying_params(runs: list[Any]) -> list[str]:
    """The params whose values differ across the runs (what tells them apart), at most MAX_PARAM_COLUMNS."""
    keys: dict[str, set[str]] = {}
    for r in runs:
        for k, v in r.data.params.items():
            keys.setdefault(k, set()).add(v)
    varying = [k for k, values in keys.items() if len(values) > 1 or any(k not in r.data.params for r in runs)]
    if len(runs) == 1:
        varying = list(keys)
    return sorted(varying, key=lambda k: (k.startswith(("model.", "models.")), k))[:MAX_PARAM_COLUMNS]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def take_stage_screenshots(
    tracking_uri: str, experiment: str, out_dir: Path, *, size: tuple[int, int] = (2000, 1100)
) -> dict[str, str]:
    """One PNG per stage in out_dir (see the module doc): {stage: file name}. UsageError when it cannot."""
    from mlflow import MlflowClient

    chromium = _need_chromium()
    shots = plan_stage_shots(tracking_uri, experiment)
    experiment_id = _experiment_id(tracking_uri, experiment)
    client = MlflowClient(tracking_uri=tracking_uri)
    for shot in shots:  # the views are experiment tags: the UI reads them from the store
        client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{shot.key}", json.dumps(shot.view))
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    with _server(tracking_uri) as (port, tmp):
        for shot in shots:
            url = f"http://{SHOT_HOST}:{port}/#/experiments/{experiment_id}/runs?viewStateShareKey={shot.key}"
            _chromium(chromium, url, out_dir / shot.file, size, tmp / "profile")
            done[shot.stage] = shot.file
    return done


def _need_chromium() -> str:
    chromium = find_chromium()
    if chromium is None:
        raise UsageError(
            "--mlflow-screenshot needs Chromium, which was not found "
            f"(looked for {', '.join(CHROMIUM_NAMES)}; or set SWEEPER_CHROMIUM). "
            "On Debian or Ubuntu: apt-get install chromium. Or leave out --mlflow-screenshot."
        )
    return chromium


@contextlib.contextmanager
def _server(tracking_uri: str, start_timeout_s: float = 90.0) -> Iterator[tuple[int, Path]]:
    """`mlflow server` on the store, on a free local port; stopped whatever happens."""
    with tempfile.TemporaryDirectory(prefix="sweeper-shot-") as tmp:
        port = _free_port()
        log_path = Path(tmp) / "mlflow-server.log"
        with open(log_path, "wb") as log:
            command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri]
            command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            command += ["--allowed-hosts", f"{SHOT_HOST}:{port},127.0.0.1:{port},localhost:{port}"]
            command += ["--cors-allowed-origins", f"http://{SHOT_HOST}:{port}"]  # the UI's own requests
            # its own process group: uvicorn's children stop with it
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_healthy(server, port, start_timeout_s, log_path)
            yield port, Path(tmp)
        finally:
            _stop(server)


def _experiment_id(tracking_uri: str, name: str) -> str:
    from mlflow import MlflowClient

    found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(name)
    if found is None:
        raise UsageError(
            f"the tracking store has no MLflow experiment {name!r}: was the sweep run with tracking off "
            "(--no-tracking)? Leave out --mlflow-screenshot, or point --tracking-uri at its store."
        )
    return str(found.experiment_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(server: subprocess.Popen, port: int, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
    why = "exited" if server.poll() is not None else f"did not answer within {timeout_s:g} s"
    raise UsageError(f"mlflow server for the screenshot {why}; its last lines:\n  " + "\n  ".join(tail))


def _chromium(chromium: str, url: str, out: Path, size: tuple[int, int], profile: Path) -> None:
    args = [
        chromium,
        f"--host-resolver-rules=MAP {SHOT_HOST} 127.0.0.1",  # see SHOT_HOST
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
        f"--virtual-time-budget={RENDER_BUDGET_MS}",
        f"--screenshot={out}",
        url,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox on
    out.unlink(missing_ok=True)
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise UsageError(f"Chromium did not finish the screenshot within {exc.timeout:g} s") from None
    if not out.is_file() or out.stat().st_size == 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise UsageError(f"Chromium wrote no screenshot (exit {done.returncode}):\n  " + "\n  ".join(tail))


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)
