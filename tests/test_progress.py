"""The worker shows its running job's progress where the user looks (sweeper/running/progress.py).

In a pipe (a notebook cell, a log file): plain lines, at most one per job every --progress-every
seconds, prefixed by worker and job, with an ETA. On a terminal: a rich bar. The training loop's
message carries epoch, batch, loss, running accuracy and images/s.
"""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace

from jobs.ml.data import load_dataset
from jobs.ml.model import Arch, Conv, build
from jobs.ml.training import LoopConfig, fit, make_optimizer
from sweeper.running.progress import LineView, format_eta
from tests.onejob import Job

from .conftest import cli_env, run_cli, wait_for
from .test_status_live import Terminal

GRID = "sweep: p\nstages:\n  a: {kind: noop, grid: {seed: [1, 2]}, params: {steps: 30, step_s: 0.1}}\n"
LINE = re.compile(r"^\d\d:\d\d:\d\d worker (\d+) job (\w+) \[a\] (\d+)% step (\d+)/30 (ETA \S+)$")


def test_lines_come_at_most_every_interval_with_an_eta():
    now = [100.0]
    lines: list[str] = []
    view = LineView(lines.append, every_s=10.0, clock=lambda: now[0])
    update = view.updater(SimpleNamespace(id="j1", stage="train"))
    for second in range(0, 41):  # a job that reports every second and does 1% per second from 20%
        now[0] = 100.0 + second
        update(0.20 + second / 100, f"step {second}")
    assert lines == [
        "job j1 [train] 30% step 10 ETA 1m10s",
        "job j1 [train] 40% step 20 ETA 1m00s",
        "job j1 [train] 50% step 30 ETA 50s",
        "job j1 [train] 60% step 40 ETA 40s",
    ]
    assert format_eta(None) == "ETA ?" and format_eta(7300) == "ETA 2h01m"


def test_training_progress_says_epoch_batch_loss_accuracy_and_speed(tmp_path):
    data = load_dataset("synthetic", train_subset=320, test_subset=64)
    job = Job(tmp_path)
    messages: list[str] = []
    model = build(Arch(Conv(4, 3), Conv(4, 3), 16), "xavier_uniform", 0)
    cfg = LoopConfig(epochs=1, batch_size=32, seed=0, target_train_acc=None)
    fit(job.attempt(), model, make_optimizer(model, 0.05, 0.9), data.train, data.test, cfg,
        progress=lambda _f, m: messages.append(m))  # fmt: skip
    job.db.dispose()
    assert messages, "no progress reported"
    assert re.fullmatch(r"epoch 1/1 batch 10/10 loss \d+\.\d{3} acc [01]\.\d{3} \d+ img/s", messages[-1]), messages[-1]
    batches = [int(m.group(1)) for m in map(re.compile(r"epoch 1/1 batch (\d+)/10 ").match, messages) if m]
    assert len(batches) == len(messages) and batches == sorted(set(batches)) and batches[-1] == 10, messages


def test_several_workers_print_their_own_prefixed_lines_in_a_pipe(tmp_path):
    # tests.kinds:together: the first job waits until the second has started, so each of the two
    # workers runs one job, however long the second one takes to start on a loaded machine.
    meet = tmp_path / "meet"
    (tmp_path / "g.yaml").write_text(
        GRID.replace("kind: noop,", "kind: 'tests.kinds:together',").replace(
            "step_s: 0.1}", f"step_s: 0.1, meet: '{meet}', expect: 2}}"
        )
    )
    state = str(tmp_path / "state")
    assert run_cli("enqueue", "g.yaml", "--state", state, cwd=tmp_path).returncode == 0
    proc = run_cli("work", "--workers", "2", "--state", state, "--no-tracking", "--progress-every", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = [m for m in map(LINE.match, proc.stderr.splitlines()) if m]
    assert found, proc.stderr
    jobs = {m.group(2) for m in found}
    workers = {m.group(1) for m in found}
    assert len(jobs) == 2 and len(workers) == 2, proc.stderr  # each worker prints its own job
    for job in jobs:
        steps = [int(m.group(4)) for m in found if m.group(2) == job]
        # throttled: 30 reports over >= 3 s of sleeping come out as a handful of lines, in order
        assert 1 <= len(steps) < 30 and steps == sorted(steps), steps


def test_a_terminal_gets_a_live_bar(tmp_path):
    (tmp_path / "g.yaml").write_text(GRID)
    state = str(tmp_path / "state")
    assert run_cli("enqueue", "g.yaml", "--state", state, cwd=tmp_path).returncode == 0
    args = [sys.executable, "-m", "sweeper.cli", "work", "--workers", "1", "--state", state, "--no-tracking"]
    term = Terminal(args, tmp_path, cli_env())
    try:
        term.wait_for(r"━+\s+\d+% step \d+/30 ETA", "a progress bar with the job's message")
        wait_for(lambda: term.read(0.3) or term.proc.poll() is not None, timeout=120, what="the worker to exit")
        assert term.proc.returncode == 0
        term.read(0.5)
        text = term.text
        assert text.splitlines()[0].startswith("1 worker x ")
        assert text.count("claimed") == 2 and text.count("done") >= 2  # log lines scroll above the bar
        assert "Traceback" not in text
    finally:
        term.close()
