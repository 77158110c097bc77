"""`sweeper status`: the dashboard renders every job state, ranks by any metric, and keeps its JSON contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from sweeper.grid.ranking import Metric, parse_metric
from sweeper.grid.spec import parse_spec
from sweeper.store.db import jobs
from sweeper.views.dashboard import collect, error_summary, parse_epoch, to_json
from sweeper.views.dashview import BAR, render, segments
from sweeper.views.status_schema import Status
from tests.conftest import REPO, cli_env, run_cli
from tests.statuszoo import build_zoo
from tests.unit.clirun import sweeper


@pytest.fixture
def zoo(db_url):
    z = build_zoo(db_url)
    yield z
    z.close()


def draw(snap, width: int = 80) -> str:
    console = Console(record=True, width=width, color_system="truecolor", force_terminal=True)
    console.print(render(snap, width))
    return console.export_text()


def test_status_shows_every_state_in_80_columns(zoo):
    text = draw(collect(zoo.db))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80

    assert "sweep zoo" in text and "every state a job can be in" in text
    assert "9 jobs: 2 blocked, 1 pending, 1 running, 3 done, 1 failed, 1 cancelled" in text
    search = next(line for line in lines if line.startswith("search "))
    assert "3/7 done" in search
    for state in ("done", "running", "pending", "failed", "cancelled"):
        assert BAR[state][0] in search, state
    follow = next(line for line in lines if line.startswith("follow "))
    assert "0/2 done" in follow and BAR["blocked"][0] in follow
    assert "waiting on search: 3/7 done" in text
    assert "1 running · 1 pending · 1 failed · 1 cancelled" in text

    # The running job: id, stage, progress, epoch, attempt and worker on one line, params below.
    running = next(line for line in lines if line.startswith(zoo.ids["running"]))
    assert re.search(r"search\s+\S+\s+40%\s+2/5\s+\d+s\s+1\s+host-a:101:aaaa", running), running
    assert lines[lines.index(running) + 1].strip() == "value=0.6"

    # Leaderboard: test_accuracy, best first.
    order = [text.index(zoo.ids[f"done-{v}"]) for v in (0.87, 0.84, 0.81)]
    assert order == sorted(order)
    assert "top 5 by test_accuracy (higher is better)" in text

    assert zoo.ids["failed"] in text
    assert "ValueError: kernel 7 is larger than the 5x5 feature map" in text
    workers = {m[0]: m[1] for m in re.findall(r"^(host-[abc])\s+\d+\s+(\w+)", text, re.M)}
    assert workers == {"host-a": "running", "host-b": "stopped", "host-c": "lost"}


def test_eta_and_throughput_come_from_finished_job_durations(zoo):
    snap = collect(zoo.db)
    search = next(s for s in snap.stages if s.stage == "search")
    assert search.mean_duration_s == pytest.approx(200.0, abs=1.0)  # 100, 200 and 300 s
    assert search.throughput_per_h == pytest.approx(3 * 3600 / 300, rel=0.02)  # 3 jobs in 300 s
    # one pending job plus the 60% left of the running one, at 200 s each, one live worker
    assert search.eta_s == pytest.approx(1.6 * 200.0, abs=2.0)
    follow = next(s for s in snap.stages if s.stage == "follow")
    assert follow.eta_s is None and follow.remaining == 2  # nothing of it has finished yet
    assert snap.eta_complete is False and snap.eta_s == pytest.approx(search.eta_s)
    assert snap.workers_live == 1


def test_leaderboard_by_time_ranks_lowest_first(zoo):
    snap = collect(zoo.db, by=parse_metric("time_to_target_s"))
    assert snap.leaderboard.mode == "min"
    assert [r.id for r in snap.leaderboard.rows] == [zoo.ids["done-0.84"], zoo.ids["done-0.81"], zoo.ids["done-0.87"]]
    assert [r.value for r in snap.leaderboard.rows] == [90.0, 120.0, 300.0]
    top1 = collect(zoo.db, by=Metric("time_to_target_s", "max"), top=1).leaderboard.rows
    assert [r.id for r in top1] == [zoo.ids["done-0.87"]]


def test_leaderboard_ignores_results_that_are_not_numbers(zoo):
    job = zoo.queue.claim("host-a:101:aaaa", 60)
    assert job is not None and job.id == zoo.ids["pending"]
    zoo.queue.complete(job.lease, {"test_accuracy": "n/a", "time_to_target_s": None})
    if zoo.db.dialect == "sqlite":
        # Python's json writes NaN, which SQLite's JSON functions reject as malformed JSON.
        with zoo.db.write() as conn:
            conn.execute(
                sa.text("UPDATE jobs SET result = :r WHERE id = :id"),
                {"r": '{"test_accuracy": NaN}', "id": zoo.ids["done-0.81"]},
            )
    snap = collect(zoo.db)
    ids = [r.id for r in snap.leaderboard.rows]
    assert zoo.ids["pending"] not in ids
    assert ids[:2] == [zoo.ids["done-0.87"], zoo.ids["done-0.84"]]
    by_time = collect(zoo.db, by=parse_metric("time_to_target_s")).leaderboard.rows
    assert zoo.ids["pending"] not in [r.id for r in by_time]


def test_leaderboard_without_the_metric_suggests_one(zoo):
    snap = collect(zoo.db, by=parse_metric("f1_score"))
    assert snap.leaderboard.rows == []
    assert "test_accuracy" in snap.leaderboard.available
    text = draw(snap)
    assert "no finished job reports f1_score yet" in text and "try --by" in text


def test_status_json_matches_its_schema(zoo, tmp_path):
    proc = run_cli("status", "--json", "--db", zoo.url, "--by", "time_to_target_s", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = Status.model_validate_json(proc.stdout, strict=True)
    assert doc.schema_ == "sweeper.status/1"
    assert doc.totals.model_dump() == {
        "blocked": 2,
        "pending": 1,
        "running": 1,
        "done": 3,
        "failed": 1,
        "cancelled": 1,
    }
    assert [s.stage for s in doc.stages] == ["search", "follow"]
    assert doc.running[0].id == zoo.ids["running"] and doc.running[0].epoch == 2 and doc.running[0].epochs == 5
    assert doc.leaderboard.metric == "time_to_target_s" and doc.leaderboard.rows[0].value == 90.0
    assert doc.failed[0].error.startswith("ValueError: kernel 7")
    assert {w.host: w.status for w in doc.workers} == {"host-a": "running", "host-b": "stopped", "host-c": "lost"}
    assert doc.database == zoo.url


def test_json_schema_is_documented_in_the_docs():
    page = (REPO / "docs" / "status-json.md").read_text()
    start = page.index("## `sweeper status --json`")
    end = page.index("\n## ", start + 1)
    section = page[start:end]
    for model in ("Status", "Stage", "Running", "Leaderboard", "Failed", "Worker"):
        fields = getattr(sys.modules["sweeper.views.status_schema"], model).model_fields
        for name, info in fields.items():
            key = info.alias or name
            assert f"`{key}`" in section, f"docs/status-json.md does not document {model}.{key}"


def test_status_never_imports_torch_or_mlflow(sqlite_url, tmp_path):
    zoo = build_zoo(sqlite_url)
    zoo.close()
    job = zoo.ids["running"]
    code = textwrap.dedent(
        f"""
        import sys
        from sweeper.cli import main
        for argv in (["status"], ["status", "--json"], ["show", "{job}"], ["export", "--csv", "-"]):
            sys.argv = ["sweeper", *argv, "--db", {zoo.url!r}]
            try:
                main()
            except SystemExit as exc:
                assert not exc.code, (argv, exc.code)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "mlflow"))
        print("HEAVY", heavy, file=sys.stderr)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr[-2000:]


def test_status_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in this process (clirun): ./state is the test's
    run = sweeper("status", "--db", f"sqlite:///{tmp_path / 'nope.db'}")
    assert run.code == 2 and "no queue database" in run.stderr and "Traceback" not in run.text
    run = sweeper("status", "--by", "test accuracy", "--db", f"sqlite:///{tmp_path / 'nope.db'}")
    assert run.code == 2 and "--by 'test accuracy'" in run.stderr and "Traceback" not in run.text
    run = sweeper("status", "--by", "loss:lowest")
    assert run.code == 2 and "max or min" in run.stderr


def test_status_of_an_empty_queue_says_what_to_do(sqlite_url, tmp_path):
    from sweeper.store.db import open_database

    open_database(sqlite_url).dispose()
    run = sweeper("status", "--db", sqlite_url)
    assert run.code == 0, run.stderr
    assert "sweeper enqueue" in run.stdout


def test_status_for_several_sweeps_names_stages_by_sweep(zoo):
    spec = parse_spec("sweep: other\nstages:\n  only: {kind: noop, grid: {value: [1.0, 2.0]}}\n")
    zoo.queue.enqueue(spec)
    text = draw(collect(zoo.db), width=100)
    assert "2 sweeps: zoo, other" in text
    assert "zoo/search" in text and "other/only" in text
    assert "0/2 done" in text
    only = collect(zoo.db, "other")
    assert [s.stage for s in only.stages] == ["only"] and only.totals()["pending"] == 2
    assert only.leaderboard.rows == [] and only.running == [] and only.failed == []
    with zoo.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 11


def test_to_json_round_trips_through_the_schema(zoo):
    doc = to_json(collect(zoo.db))
    status = Status.model_validate_json(json.dumps(doc), strict=True)
    back = status.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert back == doc  # every field read back as it was written: nothing dropped, renamed or coerced
    filled = [key for key, value in doc.items() if isinstance(value, list) and value]
    assert {"sweeps", "running", "failed"} <= set(filled), filled  # the zoo fills what is compared


@given(st.dictionaries(st.sampled_from(list(BAR)), st.integers(0, 10_000), min_size=1), st.integers(6, 120))
def test_bar_segments_fill_the_width_and_show_every_state(counts, width):
    segs = segments(counts, width)
    present = [s for s in counts if counts[s]]
    if not present:
        assert segs == []
        return
    assert sum(n for _, n in segs) == max(width, len(present))
    assert {s for s, _ in segs} == set(present) and all(n >= 1 for _, n in segs)


def test_error_summary_and_epoch_parsing():
    tb = "Traceback (most recent call last):\n  File \"x.py\", line 1\n    f()\n    ^^^\nKeyError: 'conv3'\n"
    assert error_summary(tb) == "KeyError: 'conv3'"
    assert error_summary("upstream model_search finished with 72 failed\nmore") == (
        "upstream model_search finished with 72 failed"
    )
    assert parse_epoch("epoch 3/15 loss 0.41") == (3, 15)
    assert parse_epoch("Epoch 7") == (7, None)
    assert parse_epoch("step 3/40") == (None, None)


def test_metric_direction_defaults():
    assert parse_metric("test_accuracy") == Metric("test_accuracy", "max")
    assert parse_metric("time_to_target_s") == Metric("time_to_target_s", "min")
    assert parse_metric("test_loss").mode == "min" and parse_metric("flops").mode == "min"
    assert parse_metric("test_loss:max").mode == "max"


def test_render_fits_wider_terminals_without_breaking_rows(zoo):
    text = draw(collect(zoo.db), width=140)
    assert max(len(line) for line in text.splitlines()) <= 140
    assert any(line.startswith("search ") and "3/7 done" in line for line in text.splitlines())


def test_a_diverged_job_with_nan_metrics_completes_and_ranks(zoo):
    """NaN is not JSON: stored as null on both databases, so the job completes and status still ranks."""
    job = zoo.queue.claim("host-a:101:aaaa", 60)
    assert job is not None
    zoo.queue.complete(job.lease, {"test_accuracy": 0.95, "test_loss": float("nan"), "curve": [1.0, float("inf")]})
    with zoo.db.read() as conn:
        result = conn.execute(sa.select(jobs.c.result).where(jobs.c.id == job.id)).scalar_one()
    assert result == {"test_accuracy": 0.95, "test_loss": None, "curve": [1.0, None]}
    snap = collect(zoo.db)
    assert snap.leaderboard.rows[0].id == job.id
    assert collect(zoo.db, by=parse_metric("test_loss")).leaderboard.rows == []


def test_status_for_an_unknown_sweep_names_the_ones_there(sqlite_url, tmp_path):
    build_zoo(sqlite_url).close()
    for args in (["status"], ["status", "--watch"], ["export", "--csv", "-"]):
        proc = run_cli(*args, "--sweep", "zooo", "--db", sqlite_url, cwd=tmp_path, timeout=60)
        assert proc.returncode == 2, (args, proc.stdout)
        assert "no sweep named 'zooo'" in proc.stderr and "sweeps there: zoo" in proc.stderr


def test_watch_keeps_going_when_a_read_fails(zoo):
    """A database hiccup during --watch shows a line and the next tick reads again."""
    from sweeper.views.dashview import watch

    calls = {"n": 0}

    def read():
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise ConnectionError("server closed the connection unexpectedly")
        return collect(zoo.db)

    console = Console(record=True, width=80, force_terminal=True)
    watch(read, console, interval=0.01, stop=lambda: calls["n"] >= 4)
    text = console.export_text()  # the last frame: the picture of read 3 with read 4's error under it
    assert calls["n"] == 4
    assert "cannot read the queue: server closed the connection unexpectedly; retrying" in text
    assert "sweep zoo" in text


def test_metrics_are_suggested_most_similar_first_then_most_common():
    from sweeper.grid.ranking import rank_metrics

    counts = {"min_test_accuracy": 2, "test_accuracy": 130, "train_accuracy": 130, "images_per_s": 2, "value": 5}
    assert rank_metrics("accuracy", counts)[:3] == ["test_accuracy", "train_accuracy", "min_test_accuracy"]
    assert rank_metrics("zzz", counts)[:3] == ["test_accuracy", "train_accuracy", "value"]  # nothing alike: commonest
