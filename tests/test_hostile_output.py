"""Hostile strings from the queue, through every output: printed as text, never acted on (issue 19).

Someone with write access to the queue (or a careless job kind) can put anything in a result, an
error, a progress message, a worker's host name, a label, a description or an artifact row. Each
string below goes into all of those at once, through the real Queue API (or SQL, as an attacker
would), and then through `status`, `show`, `export` (CSV), `report` and the worker's log lines.
Every text output must exit 0 without a traceback and hold no raw control byte; markup must show
literally; `--json` must keep the exact value.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import textwrap
import types
from pathlib import Path

import pytest

from sweeper.grid.spec import parse_spec
from sweeper.running.progress import LineView
from sweeper.running.worker import Worker
from sweeper.store.checkpoints import record_artifact
from sweeper.store.db import jobs, open_database, sweeps
from sweeper.store.queue import Queue
from sweeper.views.export import spreadsheet_safe
from sweeper.views.safe_text import is_clean, visible

HOSTILE = {
    "markup_path": "[/dev/nvidia0] busy",
    "markup_link": "[link=http://x]y[/link]",
    "markup_close": "x[/]y",
    "markup_tag": "[cuda] [bold red]loud",
    "esc_clear": "\x1b[2J\x1b[Hcleared",
    "osc_title": "\x1b]0;pwned\x07title",
    "osc_link": "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "c1_csi": "\x9b2Jc1",
    "bidi": "safe\u202etxt.exe",
    "isolate": "\u2066iso\u2069late",
    "csv_formula": '=HYPERLINK("http://x")',
    "csv_plus": "+cmd|' /C calc'!A0",
    "csv_at": "@SUM(A1:A2)",
    "csv_minus": "-2+3+cmd|calc",
    "nul": "a\x00b",
    "cr": "over\rwrite",
    "long": "L" * 5000,
}
GRID = textwrap.dedent(
    """\
    sweep: hostile
    stages:
      s:
        kind: noop
        grid:
          value: [{values}]
    """
)


def raw_control(text: str) -> list[str]:
    """Characters a terminal or a spreadsheet acts on (newline and tab allowed), as escapes."""
    return sorted({visible(ch) for ch in text if not is_clean(ch)})


@pytest.fixture(scope="module")
def hostile_queue(tmp_path_factory) -> tuple[Path, str, dict[str, str]]:
    """A SQLite queue with every hostile string in every place a job, a worker or a row can put one."""
    tmp = tmp_path_factory.mktemp("hostile")
    state = tmp / "state"
    state.mkdir()
    url = f"sqlite:///{state / 'queue.db'}"
    db = open_database(url)
    queue = Queue(db)
    names = list(HOSTILE)
    queue.enqueue(parse_spec(GRID.format(values=", ".join(str(i) for i in range(len(names) + 1))), "g.yaml"))
    ids: dict[str, str] = {}
    for i, name in enumerate(names):
        s = HOSTILE[name]
        worker = f"w{i}"
        queue.register_worker(worker, s if name != "markup_close" else "x[/]y", 100 + i, 1)
        job = queue.claim(worker, 60)
        ids[name] = job.id
        queue.record_event(job.lease, "note", s)
        record_artifact(queue, job.lease, name=s, sha256="0" * 64, size=1, location=None, blob=b"x")
        if i % 2:
            queue.fail(job.lease, s, retry=False)
        else:
            queue.complete(job.lease, {"note": s, s[:50]: 1.0, "test_accuracy": 0.5 + i / 100, "neg": -0.5})
    running = queue.claim("w-run", 60)
    queue.register_worker("w-run", HOSTILE["esc_clear"], 99, 1)
    queue.renew(running.lease, 60, 0.5, HOSTILE["osc_title"] + " epoch 1/2 " + HOSTILE["markup_link"])
    ids["running"] = running.id
    with db.write() as conn:  # as an attacker with the database password would
        conn.execute(sweeps.update().values(description=HOSTILE["osc_link"] + HOSTILE["bidi"]))
        conn.execute(jobs.update().where(jobs.c.id == running.id).values(label=HOSTILE["esc_clear"]))
    db.dispose()
    return tmp, url, ids


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`sweeper ARGS` in this process, through main(): the exit code and what it printed."""
    from sweeper import cli as sweeper_cli

    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(sys, "argv", ["sweeper", *args])
    try:
        sweeper_cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_safe_text(code: int, out: str, err: str) -> None:
    assert code == 0, err
    assert "Traceback" not in out + err, err
    assert raw_control(out + err) == [], raw_control(out + err)


def test_status_prints_every_hostile_value_as_text(hostile_queue, monkeypatch, capsys):
    _tmp, url, _ = hostile_queue
    code, out, err = cli(monkeypatch, capsys, "status", "--db", url, "--failures", "20")
    assert_safe_text(code, out, err)
    assert "x[/]y" in out  # the worker host that used to crash the workers table
    assert "\\x1b[2J" in out  # the ESC shown as an escape, not acted on
    assert "[link=http://x]y[/link]" in out  # the progress message, literally


def test_the_issue_example_shows_and_lists_literally(tmp_path, monkeypatch, capsys):
    """The must-show of issue 19: markup in a result and in a worker's host name, printed as is."""
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    db = open_database(url)
    queue = Queue(db)
    queue.enqueue(parse_spec(GRID.format(values="1, 2"), "g.yaml"))
    queue.register_worker("w", "x[/]y", 1, 1)
    job = queue.claim("w", 60)
    queue.complete(
        job.lease, {"device_note": "[/dev/nvidia0] busy", "link": "[link=http://x]y[/link]", "gpu": "[cuda]"}
    )
    queue.claim("w", 60)  # a running job, so the worker has one
    db.dispose()
    code, out, err = cli(monkeypatch, capsys, "show", job.id, "--db", url)
    assert_safe_text(code, out, err)
    for literal in ("[/dev/nvidia0] busy", "[link=http://x]y[/link]", "[cuda]"):
        assert literal in out, out
    code, out, err = cli(monkeypatch, capsys, "status", "--db", url)
    assert_safe_text(code, out, err)
    assert "x[/]y" in out, out


@pytest.mark.parametrize("name", [*HOSTILE, "running"])
def test_show_prints_every_hostile_value_as_text(hostile_queue, monkeypatch, capsys, name):
    tmp, url, ids = hostile_queue
    code, out, err = cli(monkeypatch, capsys, "show", ids[name], "--db", url, "--state", str(tmp / "state"))
    assert_safe_text(code, out, err)
    s = HOSTILE.get(name, "")
    if is_clean(s) and name != "long":  # shown literally: markup is never interpreted
        assert s in out, out


@pytest.mark.parametrize("name", ["markup_path", "esc_clear", "bidi", "nul"])
def test_show_json_keeps_the_exact_values(hostile_queue, monkeypatch, capsys, name):
    _tmp, url, ids = hostile_queue
    code, out, err = cli(monkeypatch, capsys, "show", ids[name], "--db", url, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["result"]["note"] == HOSTILE[name]
    assert [a["name"] for a in doc["artifacts"]] == [HOSTILE[name]]


def test_status_json_keeps_the_exact_values(hostile_queue, monkeypatch, capsys):
    _tmp, url, _ = hostile_queue
    code, out, err = cli(monkeypatch, capsys, "status", "--db", url, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert HOSTILE["esc_clear"] in {w["host"] for w in doc["workers"]}


def test_export_defuses_formulas_and_control_characters(hostile_queue, monkeypatch, capsys):
    tmp, url, ids = hostile_queue
    target = tmp / "jobs.csv"
    code, out, err = cli(monkeypatch, capsys, "export", "--csv", str(target), "--db", url)
    assert_safe_text(code, out, err)
    text = target.read_text()
    assert raw_control(text) == []
    by_id = {row["id"]: row for row in csv.DictReader(io.StringIO(text))}
    assert by_id[ids["csv_formula"]]["metrics.note"] == '\'=HYPERLINK("http://x")'
    assert by_id[ids["csv_at"]]["metrics.note"] == "'@SUM(A1:A2)"
    assert by_id[ids["csv_plus"]]["error"].startswith("'+cmd")  # failed jobs: the error column
    assert by_id[ids["csv_minus"]]["error"].startswith("'-2+3")
    assert by_id[ids["markup_path"]]["metrics.neg"] == "-0.5"  # a number stays a number
    for row in by_id.values():
        for value in row.values():
            assert not value.startswith(("=", "+", "@", "\t", "\r")), value


@pytest.mark.parametrize(
    "value, written",
    [
        ("=1+1", "'=1+1"),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("@A1", "'@A1"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\\x0d=1"),
        ("-0.5", "-0.5"),
        ("+3", "+3"),
        ("-1e-5", "-1e-5"),
        (-0.5, -0.5),
        ("a=1", "a=1"),
    ],
)
def test_a_csv_cell_is_prefixed_only_when_a_spreadsheet_would_run_it(value, written):
    assert spreadsheet_safe(value) == written


def test_report_shows_hostile_values_as_markdown_text(hostile_queue, monkeypatch, capsys):
    tmp, url, _ids = hostile_queue
    out_dir = tmp / "report"
    args = ("report", "--out", str(out_dir), "--db", url, "--state", str(tmp / "state"), "--no-plots", "--no-plugins")
    code, out, err = cli(monkeypatch, capsys, *args)
    assert_safe_text(code, out, err)
    md = (out_dir / "report.md").read_text()
    assert raw_control(md) == []
    assert "[link=" not in md.replace("\\[link=", "")  # every [ escaped: no Markdown link or image
    assert "\\[link=http://x\\]y\\[/link\\]" in md


def test_worker_log_lines_show_hostile_values_as_text():
    lines: list[str] = []
    fake = types.SimpleNamespace(id="host:123:0", _print=lines.append)
    clock = iter(range(0, 10_000, 100))
    view = LineView(lines.append, every_s=1, clock=lambda: float(next(clock)))
    for s in HOSTILE.values():
        Worker.log(fake, f"claimed job [{s}]")  # type: ignore[arg-type]
        job = types.SimpleNamespace(id="abc", stage=s)
        view.updater(job)(0.5, s)
    assert len(lines) == 2 * len(HOSTILE)
    for line in lines:
        assert raw_control(line) == [], line
        assert "\n" not in line  # a message cannot forge a second log line


# ---------------------------------------------------------------------------------------------
# Names at enqueue, and errors that quote them


@pytest.mark.parametrize(
    "grid, key, message",
    [
        ("sweep: " + "a" * 300 + "\nstages:\n  s: {kind: noop}\n", "key 'sweep'", "300 characters long"),
        ('sweep: ".."\nstages:\n  s: {kind: noop}\n', "key 'sweep'", "must be a name"),
        ("sweep: .hidden\nstages:\n  s: {kind: noop}\n", "key 'sweep'", "must be a name"),
        ("sweep: s\nstages:\n  " + "b" * 201 + ": {kind: noop}\n", "stage 'bbbb", "201 characters long"),
        ('sweep: s\nstages:\n  "a\\e[2J\\u202eb": {kind: noop}\n', "stage 'a\\x1b[2J\\u202eb'", "a stage name is"),
        ("sweep: s\nstages:\n  s: {kind: " + "k" * 301 + "}\n", "key 'kind'", "301 characters long"),
    ],
)
def test_enqueue_refuses_names_the_queue_or_a_file_cannot_hold(tmp_path, monkeypatch, capsys, grid, key, message):
    (tmp_path / "g.yaml").write_text(grid)
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    code, out, err = cli(monkeypatch, capsys, "enqueue", str(tmp_path / "g.yaml"), "--db", url)
    assert code == 2, out + err
    assert "g.yaml" in err and key in err and message in err, err
    assert "Traceback" not in out + err and raw_control(out + err) == []
    if (tmp_path / "queue.db").exists():  # nothing enqueued
        db = open_database(url)
        with db.read() as conn:
            assert conn.execute(sweeps.select()).all() == []
        db.dispose()


def test_name_limits_match_the_queue_columns():
    from sweeper.grid.spec import KIND_MAX, NAME_MAX
    from sweeper.store.db import jobs as job_rows
    from sweeper.store.db import stages

    assert sweeps.c.name.type.length == job_rows.c.sweep.type.length == NAME_MAX
    assert stages.c.name.type.length == job_rows.c.stage.type.length == NAME_MAX
    assert job_rows.c.kind.type.length == KIND_MAX


# ---------------------------------------------------------------------------------------------
# `show` checks a stored location before it looks


@pytest.mark.parametrize("location", ["../" * 12 + "etc/passwd", "/etc/passwd", "artifacts/hostile/other-job/x"])
def test_show_refuses_an_unsafe_location_without_looking_at_it(tmp_path, monkeypatch, capsys, location):
    state = tmp_path / "state"
    state.mkdir()
    url = f"sqlite:///{state / 'queue.db'}"
    db = open_database(url)
    queue = Queue(db)
    queue.enqueue(parse_spec(GRID.format(values="1"), "g.yaml"))
    job = queue.claim("w", 60)
    record_artifact(queue, job.lease, name="model.pt", sha256="0" * 64, size=1, location=location, blob=None)
    db.dispose()
    looked: list[str] = []
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        looked.append(str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    code, out, err = cli(monkeypatch, capsys, "show", job.id, "--db", url, "--state", str(state), "--json")
    assert code == 0, err
    art = json.loads(out)["artifacts"][0]
    assert art["present"] is None and art["refused"], art  # not "present": true for /etc/passwd
    assert not [p for p in looked if "passwd" in p or "other-job" in p], looked
    code, out, err = cli(monkeypatch, capsys, "show", job.id, "--db", url, "--state", str(state))
    assert code == 0 and "refused, not looked at" in out, out + err
