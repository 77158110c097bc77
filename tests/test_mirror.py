"""Mirrored mode: the live queue on local disk, verified snapshots on the (simulated) network mount.

Every test works on a plain directory forced into mirrored mode (--mirror on), or one that a fake
mount table describes as Google Drive, with SWEEPER_MIRROR_DIR pointing each "machine" at its own
local disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeper.config import resolve_settings
from sweeper.errors import UsageError
from sweeper.mirrored.mirror import SnapshotChain, open_state
from sweeper.mirrored.recovery import record_result

from .conftest import cli_env, run_cli, start_worker, stop_process, wait_for

GRID_A = """\
sweep: mirror
stages:
  s:
    kind: noop
    grid:
      value: [1, 2, 3]
"""
GRID_B = GRID_A.replace("[1, 2, 3]", "[1, 2, 3, 4, 5]")


def _cli(tmp_path: Path, vm: str, *args: str, mirror: str = "on", **env: str):
    """`sweeper ARGS --state <tmp>/state --mirror on` as run on machine `vm` (its own local disk)."""
    env = {"SWEEPER_MIRROR_DIR": str(tmp_path / vm), **env}
    return run_cli(*args, "--state", str(tmp_path / "state"), "--mirror", mirror, **env)


def _status(tmp_path: Path, vm: str, **env: str) -> tuple[dict, str]:
    done = _cli(tmp_path, vm, "status", "--json", **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def _jobs(status: dict) -> int:
    return sum(sum(stage["counts"].values()) for stage in status["stages"])


def _snapshots(state: Path, stem: str = "queue") -> list[Path]:
    return [s.path for s in SnapshotChain(state / f"{stem}.db").list()]


def _grid(tmp_path: Path, text: str, name: str = "grid.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_new_machine_restores_the_newest_snapshot(tmp_path):
    state = tmp_path / "state"
    done = _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_A))
    assert done.returncode == 0, done.stderr
    # Nothing live on the "network mount": no queue.db, no -wal, no -shm; one verified snapshot.
    assert not list(state.glob("queue.db*"))
    (snap,) = _snapshots(state)
    assert snap.name.startswith("queue.") and len(snap.name.split(".")[2]) == 64

    status, _ = _status(tmp_path, "vm2")  # another machine, empty local disk
    assert _jobs(status) == 3
    assert "snapshot" in status["mirror"]["notes"][0]
    # A second enqueue on a third machine is idempotent and adds the new values only.
    done = _cli(tmp_path, "vm3", "enqueue", _grid(tmp_path, GRID_B))
    assert done.returncode == 0 and "added 2 new job(s), 3 unchanged" in done.stdout, done.stdout + done.stderr
    assert _jobs(_status(tmp_path, "vm4")[0]) == 5


def test_only_the_last_two_snapshots_are_kept(tmp_path, monkeypatch):
    from sweeper.grid.spec import parse_spec
    from sweeper.store.db import open_database
    from sweeper.store.queue import Queue

    settings = resolve_settings(state=tmp_path / "state", tracking=False)
    monkeypatch.setenv("SWEEPER_MIRROR_DIR", str(tmp_path / "vm1"))
    for values in ["[1]", "[1, 2]", "[1, 2, 3]", "[1, 2, 3, 4]"]:
        with open_state(settings, command="enqueue", access="write", mirror="on", log=lambda _: None) as session:
            db = open_database(session.settings.db_url)
            Queue(db).enqueue(parse_spec(GRID_A.replace("[1, 2, 3]", values), "grid.yaml"))
            db.dispose()
    assert len(_snapshots(tmp_path / "state")) == 2
    assert _jobs(_status(tmp_path, "vm2")[0]) == 4


def test_unchanged_state_pushes_no_new_snapshot(tmp_path, monkeypatch):
    assert _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_A)).returncode == 0
    before = _snapshots(tmp_path / "state")
    settings = resolve_settings(state=tmp_path / "state", tracking=False)
    for vm in ("vm1", "vm2"):  # the same machine, then a new one: a session that changes nothing
        monkeypatch.setenv("SWEEPER_MIRROR_DIR", str(tmp_path / vm))
        with open_state(settings, command="retry", access="write", mirror="on", log=lambda _: None):
            pass
    assert _snapshots(tmp_path / "state") == before


def test_corrupted_newest_snapshot_is_skipped_with_a_warning(tmp_path):
    assert _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_A)).returncode == 0
    assert _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_B, "b.yaml")).returncode == 0
    newest, previous = _snapshots(tmp_path / "state")
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a torn upload
    newest.write_bytes(bytes(data))

    status, stderr = _status(tmp_path, "vm2")
    assert _jobs(status) == 3  # the previous snapshot: before grid B was enqueued
    assert "warning" in stderr and newest.name in stderr and "previous" in stderr
    assert previous.name[:30] in status["mirror"]["notes"][0]

    # A writing session on a new machine waits for the snapshot the lease names to heal (as a slow
    # upload would), then continues from the previous one, and keeps the damaged file.
    done = _cli(tmp_path, "vm3", "enqueue", _grid(tmp_path, GRID_B, "b.yaml"), SWEEPER_SNAPSHOT_SYNC_WAIT_S="1")
    assert done.returncode == 0 and "added 2 new job(s)" in done.stdout, done.stderr
    assert newest.name in done.stderr and "waiting for queue snapshot" in done.stderr
    assert "still fails its sha256 check" in done.stderr and newest.exists()


def test_no_intact_snapshot_refuses_to_start_from_an_empty_queue(tmp_path):
    assert _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_A)).returncode == 0
    for snap in _snapshots(tmp_path / "state"):
        snap.write_bytes(b"not a database")
    # The corrupt snapshots stand for a sync that never completes: do not wait the default 120 s for it.
    done = _cli(tmp_path, "vm2", "enqueue", _grid(tmp_path, GRID_A), SWEEPER_SNAPSHOT_SYNC_WAIT_S="1")
    assert done.returncode == 2, done.stderr
    assert "passes its sha256 check" in done.stderr and "Traceback" not in done.stderr


def test_drive_mount_is_mirrored_automatically_and_off_overrides(tmp_path):
    drive = tmp_path / "content" / "drive"
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\ndrive {drive} fuse.drive rw,nosuid,nodev 0 0\n")
    state = drive / "MyDrive" / "sweeps" / "fmnist"
    env = {"SWEEPER_MOUNTS_FILE": str(mounts), "SWEEPER_MIRROR_DIR": str(tmp_path / "vm1")}
    grid = _grid(tmp_path, GRID_A)

    done = run_cli("enqueue", grid, "--state", str(state), **env)
    assert done.returncode == 0, done.stderr
    assert not (state / "queue.db").exists() and len(_snapshots(state)) == 1

    local = tmp_path / "local-state"
    done = run_cli("enqueue", grid, "--state", str(local), **env)  # not on the mount: used in place
    assert done.returncode == 0 and (local / "queue.db").exists() and not (local / "snapshots").exists()

    done = run_cli("enqueue", grid, "--state", str(state), "--mirror", "off", **env)
    assert done.returncode == 0 and (state / "queue.db").exists()


def test_database_used_in_place_before_is_imported_once(tmp_path):
    grid = _grid(tmp_path, GRID_A)
    assert _cli(tmp_path, "vm1", "enqueue", grid, mirror="off").returncode == 0
    assert (tmp_path / "state" / "queue.db").exists()
    done = _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_B, "b.yaml"))
    assert done.returncode == 0 and "importing" in done.stderr, done.stderr
    assert "added 2 new job(s), 3 unchanged" in done.stdout
    assert _jobs(_status(tmp_path, "vm2")[0]) == 5


def test_local_copy_newer_than_the_snapshot_is_kept_on_the_same_machine(tmp_path, monkeypatch):
    """A crash after a local write but before its snapshot loses nothing when the same VM restarts.
    On another machine the snapshot is all there is."""
    settings = resolve_settings(state=tmp_path / "state", tracking=False)
    monkeypatch.setenv("SWEEPER_MIRROR_DIR", str(tmp_path / "vm1"))
    with open_state(settings, command="enqueue", access="write", mirror="on", log=lambda _: None) as session:
        local = Path(session.settings.db_url.split(":///", 1)[1])
    conn = sqlite3.connect(local)  # a write that never reached a snapshot (the VM died)
    conn.execute("INSERT INTO sweeper_meta (key, value) VALUES ('unpushed', 'yes')")
    conn.commit()
    conn.close()

    with open_state(settings, command="status", access="read", mirror="on", log=lambda _: None) as session:
        path = session.settings.db_url.split(":///", 1)[1]
        assert _meta(path, "unpushed") == "yes"
    monkeypatch.setenv("SWEEPER_MIRROR_DIR", str(tmp_path / "vm2"))
    with open_state(settings, command="status", access="read", mirror="on", log=lambda _: None) as session:
        assert _meta(session.settings.db_url.split(":///", 1)[1], "unpushed") is None


def _meta(path: str, key: str) -> str | None:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM sweeper_meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def test_mlflow_store_is_mirrored_alongside_the_queue(tmp_path, monkeypatch):
    settings = resolve_settings(state=tmp_path / "state")  # default tracking: sqlite:///<state>/mlflow.db
    monkeypatch.setenv("SWEEPER_MIRROR_DIR", str(tmp_path / "vm1"))
    with open_state(settings, command="work", access="write", mirror="on", log=lambda _: None) as session:
        assert session.settings.tracking_uri.startswith("sqlite:///" + str(tmp_path / "vm1"))
        conn = sqlite3.connect(session.settings.tracking_uri.split(":///", 1)[1])
        conn.execute("CREATE TABLE runs (run_uuid TEXT)")
        conn.execute("INSERT INTO runs VALUES ('r1')")
        conn.commit()
        conn.close()
    assert not (tmp_path / "state" / "mlflow.db").exists()
    assert len(_snapshots(tmp_path / "state", "mlflow")) == 1
    monkeypatch.setenv("SWEEPER_MIRROR_DIR", str(tmp_path / "vm2"))
    with open_state(settings, command="work", access="write", mirror="on", log=lambda _: None) as session:
        conn = sqlite3.connect(session.settings.tracking_uri.split(":///", 1)[1])
        assert conn.execute("SELECT run_uuid FROM runs").fetchall() == [("r1",)]
        conn.close()


def test_mirror_on_with_postgres_is_a_usage_error():
    settings = resolve_settings(db="postgresql://postgres@127.0.0.1:5432/test", tracking=False)
    with (
        pytest.raises(UsageError, match="SQLite queue only"),
        open_state(settings, command="x", access="read", mirror="on"),
    ):
        pass


def test_result_written_before_a_lost_snapshot_is_recorded_not_rerun(tmp_path):
    """The VM died after a job finished but before the snapshot saying so: it is not run again."""
    counts = tmp_path / "counts"
    counts.mkdir()
    grid = _grid(tmp_path, GRID_A.replace("grid:", f"params: {{counter_dir: {counts}}}\n    grid:"))
    assert _cli(tmp_path, "vm1", "enqueue", grid).returncode == 0
    settings = resolve_settings(state=tmp_path / "state", tracking=False)
    os.environ["SWEEPER_MIRROR_DIR"] = str(tmp_path / "vm1")
    try:
        with open_state(settings, command="enqueue", access="write", mirror="on", log=lambda _: None) as session:
            lineage = session.lineage
            conn = sqlite3.connect(session.settings.db_url.split(":///", 1)[1])
            job_id = conn.execute("SELECT id FROM jobs WHERE label = 'value=2'").fetchone()[0]
            conn.close()
    finally:
        del os.environ["SWEEPER_MIRROR_DIR"]
    record_result(tmp_path / "state", lineage, "mirror", job_id, 1, {"value": 2.0, "from": "the lost session"})
    # The same job id in a queue started afresh (another lineage) must not pick that result up.
    record_result(tmp_path / "state", "another-lineage", "mirror", "0" * 12, 1, {"value": -1})

    done = _cli(tmp_path, "vm2", "work", "--no-tracking")
    assert done.returncode == 0, done.stderr
    assert "instead of running it again" in done.stderr
    assert not (counts / job_id).exists()  # not run again
    assert len(list(counts.iterdir())) == 2  # the other two ran
    shown = _cli(tmp_path, "vm3", "show", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["result"]["from"] == "the lost session"


def test_recovery_after_a_vanished_worker_is_reported_by_status(tmp_path):
    grid = _grid(tmp_path, GRID_A.replace("grid:", "params: {steps: 200, step_s: 0.05}\n    grid:"))
    assert _cli(tmp_path, "vm1", "enqueue", grid).returncode == 0
    log = tmp_path / "worker.log"
    proc = start_worker(
        "--state",
        str(tmp_path / "state"),
        "--mirror",
        "on",
        "--no-tracking",
        log=log,
        SWEEPER_MIRROR_DIR=str(tmp_path / "vm1"),
    )
    try:
        # Wait until a snapshot shows the job running and a checkpoint exists, then pull the plug.
        wait_for(lambda: "claimed" in log.read_text() and list((tmp_path / "state").glob("checkpoints/*/*/*.ckpt")))
        time.sleep(1.5)
    finally:
        stop_process(proc)
    assert proc.returncode == -9

    done = _cli(tmp_path, "vm2", "enqueue", grid)  # the next session, on a new VM
    assert done.returncode == 0, done.stderr
    assert "recovery: 1 job(s) that were running went back to the queue" in done.stderr
    human = _cli(tmp_path, "vm3", "status")
    assert human.returncode == 0, human.stderr
    text = " ".join(human.stdout.split())
    assert "recovered at" in text and "at most the work since the last snapshot or checkpoint" in text
    status, _ = _status(tmp_path, "vm3")
    recovery = status["mirror"]["last_recovery"]
    assert len(recovery["released"]) == 1 and "pid" in recovery["previous"]
    assert status["stages"][0]["counts"].get("running", 0) == 0


def test_session_that_loses_its_lease_stops_without_pushing(tmp_path):
    grid = _grid(tmp_path, GRID_A.replace("grid:", "params: {steps: 400, step_s: 0.05}\n    grid:"))
    assert _cli(tmp_path, "vm1", "enqueue", grid).returncode == 0
    log = tmp_path / "worker.log"
    proc = start_worker(
        "--state",
        str(tmp_path / "state"),
        "--mirror",
        "on",
        "--no-tracking",
        log=log,
        SWEEPER_MIRROR_DIR=str(tmp_path / "vm1"),
        SWEEPER_STATE_LEASE_S="3",
    )
    try:
        wait_for(lambda: "claimed" in log.read_text())
        lease_file = tmp_path / "state" / "queue.lease"
        holder = json.loads(lease_file.read_text())
        thief = {**holder, "session": "thief123", "host": "other-vm", "boot_id": "x", "expires_at": time.time() + 600}
        lease_file.write_text(json.dumps(thief))
        taken_at = time.time_ns()
        assert proc.wait(timeout=60) == 0
    finally:
        stop_process(proc)
    text = log.read_text()
    assert "taken over by session thief123" in text and "released" in text
    assert json.loads(lease_file.read_text())["session"] == "thief123"
    newest = SnapshotChain(tmp_path / "state" / "queue.db").list()[0]
    assert newest.time_ns < taken_at  # nothing pushed over the new holder's state


def test_mirrored_status_and_enqueue_import_neither_torch_nor_mlflow(tmp_path):
    grid = _grid(tmp_path, GRID_A)
    probe = (
        "import sys; from sweeper.cli import main; sys.argv = ['sweeper'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('HEAVY', sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    )
    for args in (["enqueue", grid], ["status"]):
        done = run_cli_python(probe, *args, "--state", str(tmp_path / "state"), "--mirror", "on", tmp_path=tmp_path)
        assert "HEAVY []" in done.stdout, done.stdout + done.stderr


def run_cli_python(code: str, *args: str, tmp_path: Path):
    env = cli_env(SWEEPER_MIRROR_DIR=str(tmp_path / "vm1"))
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)


def test_colab_notebook_is_a_valid_notebook_with_every_step():
    path = Path(__file__).resolve().parents[1] / "docs" / "colab.ipynb"
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python"
    code = []
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and "execution_count" in cell
            text = "".join(cell["source"])
            # Python once the IPython shell lines (! and %) are left out.
            compile("\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith(("!", "%"))), "cell", "exec")
            code.append(text)
    steps = ["drive.mount(", "%pip install", "!sweeper work --wait", "!sweeper status", "mlflow"]
    positions = [next(i for i, text in enumerate(code) if step in text) for step in steps]
    assert positions == sorted(positions), "the steps are out of order"
    assert "/content/drive/MyDrive/sweeps/" in "".join(code)
    # Nothing to edit before "Run all": no placeholder, no worker settings that beat the defaults.
    assert "<owner>" not in "".join(code) and "--workers" not in "".join(code)


def test_mlflow_store_is_pushed_at_most_every_interval_but_always_at_exit(tmp_path, monkeypatch):
    from sweeper.mirrored.mirror import MirroredState, plan

    monkeypatch.setenv("SWEEPER_MIRROR_DIR", str(tmp_path / "vm1"))
    settings = resolve_settings(state=tmp_path / "state")
    state = MirroredState(settings, plan(settings, "on"), log=lambda _: None, snapshot_every_s=3600)
    session = state.start("write", "enqueue")
    paths = [session.settings.db_url.split(":///", 1)[1], session.settings.tracking_uri.split(":///", 1)[1]]

    def write(i: int) -> None:
        for path in paths:
            conn = sqlite3.connect(path)
            conn.execute("CREATE TABLE IF NOT EXISTS t (i INTEGER)")
            conn.execute("INSERT INTO t VALUES (?)", (i,))
            conn.commit()
            conn.close()

    write(1)
    assert sorted(s.name.split(".")[0] for s in state.push()) == ["mlflow", "queue"]
    write(2)
    assert [s.name.split(".")[0] for s in state.push()] == ["queue"]  # MLflow waits for its interval
    write(3)
    state.close()  # the final push takes everything
    assert len(_snapshots(tmp_path / "state", "mlflow")) == 2 and len(_snapshots(tmp_path / "state")) == 2
    newest = SnapshotChain(tmp_path / "state" / "mlflow.db").list()[0]
    conn = sqlite3.connect(newest.path)
    assert conn.execute("SELECT max(i) FROM t").fetchone() == (3,)
    conn.close()


def test_bad_snapshot_interval_in_the_environment_is_a_clear_error(tmp_path):
    done = _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_A), SWEEPER_SNAPSHOT_EVERY_S="often")
    assert done.returncode == 2 and "SWEEPER_SNAPSHOT_EVERY_S='often'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_local_copy_directory_planted_by_someone_else_is_refused(tmp_path):
    from sweeper.mirrored.mirror import local_dir_for

    grid = _grid(tmp_path, GRID_A)
    assert _cli(tmp_path, "vm1", "enqueue", grid).returncode == 0
    local = tmp_path / "vm1" / local_dir_for(tmp_path / "state" / "queue.db").name
    assert local.is_dir() and local.stat().st_mode & 0o077 == 0  # private to this user
    local.chmod(0o777)  # as if another user had created it, open to all
    done = _cli(tmp_path, "vm1", "status")
    assert done.returncode == 2 and "not a private directory" in done.stderr and "Traceback" not in done.stderr


def _writer(tmp_path: Path, vm: str):
    """A mirrored "enqueue" session on machine `vm`, opened by hand so that a test can act mid-way."""
    from sweeper.mirrored.mirror import MirroredState, plan

    os.environ["SWEEPER_MIRROR_DIR"] = str(tmp_path / vm)
    try:
        settings = resolve_settings(state=tmp_path / "state", tracking=False)
        state = MirroredState(settings, plan(settings, "on"), log=lambda _: None)
        session = state.start("write", "enqueue")
    finally:
        del os.environ["SWEEPER_MIRROR_DIR"]
    return state, Path(session.settings.db_url.split(":///", 1)[1])


def _touch_queue(path: Path, value: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("INSERT OR REPLACE INTO sweeper_meta (key, value) VALUES ('touched', ?)", (value,))
    conn.commit()
    conn.close()


def test_push_is_refused_once_the_lease_names_another_session(tmp_path):
    from sweeper.errors import StateLocked

    assert _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_A)).returncode == 0
    state, local = _writer(tmp_path, "vm1")
    lease_file = tmp_path / "state" / "queue.lease"
    thief = {**json.loads(lease_file.read_text()), "session": "0badc0de", "host": "other-vm", "boot_id": "x"}
    lease_file.write_text(json.dumps(thief))
    before = _snapshots(tmp_path / "state")
    _touch_queue(local, "after the takeover")
    with pytest.raises(StateLocked, match="no longer names session"):
        state.push()
    state.close()  # the final push is refused as well, and the lease is not released over the thief's
    assert _snapshots(tmp_path / "state") == before
    assert json.loads(lease_file.read_text())["session"] == "0badc0de"


def test_push_never_buries_or_deletes_a_snapshot_another_session_wrote(tmp_path):
    """A snapshot this session did not write appears after it took the lease (split brain on an
    eventually consistent mount, or a clock behind): refuse to push, delete nothing."""
    import shutil

    from sweeper.mirrored.mirror import SnapshotConflict

    assert _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_A)).returncode == 0
    assert _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_B, "b.yaml")).returncode == 0
    state, local = _writer(tmp_path, "vm1")
    newest, oldest = _snapshots(tmp_path / "state")
    # Another session's snapshot, older by name than everything here (its machine's clock is behind).
    ns, digest = oldest.name.split(".")[1:3]
    foreign = oldest.with_name(f"queue.{int(ns) - 1000:020d}.{digest}.0badc0de.db")
    shutil.copy(oldest, foreign)
    _touch_queue(local, "split brain")
    with pytest.raises(SnapshotConflict, match="session 0badc0de"):
        state.push()
    assert sorted(_snapshots(tmp_path / "state")) == sorted([newest, oldest, foreign])
    state.close()
    assert sorted(_snapshots(tmp_path / "state")) == sorted([newest, oldest, foreign])


def test_own_and_superseded_snapshots_are_pruned_to_two(tmp_path):
    grid = _grid(tmp_path, GRID_A)
    assert _cli(tmp_path, "vm1", "enqueue", grid).returncode == 0
    state, local = _writer(tmp_path, "vm2")  # a new machine restores the only snapshot
    for i in range(3):
        _touch_queue(local, str(i))
        state.push()
    state.close()
    snaps = SnapshotChain(tmp_path / "state" / "queue.db").list()
    assert len(snaps) == 2 and {s.session for s in snaps} == {state.lease.me.session}


def test_new_vm_waits_for_the_final_snapshot_the_released_lease_names(tmp_path):
    """Drive shows the older snapshot first: the new VM must not restore it (and bury the newer
    one under its own push); it waits until the named one arrives."""
    assert _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_A)).returncode == 0
    assert _cli(tmp_path, "vm1", "enqueue", _grid(tmp_path, GRID_B, "b.yaml")).returncode == 0
    state_dir = tmp_path / "state"
    lease = json.loads((state_dir / "queue.lease").read_text())
    newest, _older = _snapshots(state_dir)
    assert lease["released"] and lease["snapshots"]["queue"] == newest.name
    syncing = tmp_path / "not-synced-yet"
    syncing.mkdir()
    os.replace(newest, syncing / newest.name)

    # It never arrives within the wait: refused with exit 4, nothing pushed, the lease still names it.
    done = _cli(tmp_path, "vm2", "enqueue", _grid(tmp_path, GRID_A), SWEEPER_SNAPSHOT_SYNC_WAIT_S="1")
    assert done.returncode == 4, done.stderr
    assert "has not reached" in done.stderr and newest.name in done.stderr and "Traceback" not in done.stderr
    assert _snapshots(state_dir) == [_older]
    assert json.loads((state_dir / "queue.lease").read_text())["snapshots"]["queue"] == newest.name

    # It arrives while the new VM waits: that is what it continues from (5 jobs, not 3).
    log = tmp_path / "vm3.log"
    args = ["enqueue", _grid(tmp_path, GRID_A), "--state", str(state_dir), "--mirror", "on"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper.cli", *args],
            env=cli_env(SWEEPER_MIRROR_DIR=str(tmp_path / "vm3"), SWEEPER_SNAPSHOT_SYNC_WAIT_S="300"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "waiting for queue snapshot" in log.read_text() or proc.poll() is not None, 120)
        assert proc.poll() is None, log.read_text()
        os.replace(syncing / newest.name, newest)  # Drive catches up
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        stop_process(proc)
    assert "0 new job(s), 3 unchanged" in log.read_text()
    assert _jobs(_status(tmp_path, "vm4")[0]) == 5
