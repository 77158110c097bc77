"""A database URL that cannot work fails at once; a database that does not answer is waited out aloud.

Misconfigurations (a host name that does not resolve, a database that does not exist, a login the
server refuses) will not fix themselves: every command exits 3 at once with what to check. A
refused connection is an outage: a worker keeps retrying up to --db-outage-limit with a line at
least every 10 s (the reason and the time left); interactive commands give up after 3 s.
"Refused" is a port on 127.0.0.1 that is bound but not listening: the shared PostgreSQL server
is never stopped here (tests/test_db_outage.py does that).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sweeper.errors import DatabaseUnavailable
from sweeper.store.db import OutagePolicy, connect_problem, open_database
from tests.unit.clirun import sweeper as invoke

from .conftest import run_cli

NO_HOST = "postgresql://u:pw@nohost.invalid/sweeps"  # .invalid never resolves (RFC 6761)
GRID = "sweep: s\nstages:\n  a: {kind: noop}\n"


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A local port that refuses connections: bound (so no one else takes it), never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/sweeps"
    finally:
        sock.close()


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    return path


@pytest.mark.parametrize("workers", ["1", "2"])
def test_work_on_a_host_name_that_does_not_resolve_exits_3_at_once_with_what_to_check(tmp_path, workers):
    # Waiting out the default outage limit (120 s) would overrun the subprocess timeout.
    proc = run_cli(
        "work", "--workers", workers, "--db", NO_HOST, "--state", str(tmp_path / "s"), "--no-tracking", timeout=90
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 3, text
    assert "Traceback" not in text and "did not answer" not in text, text
    flat = " ".join(text.split())
    assert "the host name 'nohost.invalid' does not resolve" in flat, text
    assert "check the host in --db (or SWEEPER_DB)" in flat, text
    assert flat.count("does not resolve") == 1, text  # said once, not once per worker process
    assert "pw@" not in text  # the password stays masked


@pytest.mark.parametrize("command", ["status", "enqueue", "show", "export"])
def test_interactive_commands_on_a_host_name_that_does_not_resolve_exit_3(tmp_path, grid, command):
    args = {"enqueue": [str(grid)], "show": ["abcd1234"], "export": ["--csv", str(tmp_path / "x.csv")]}.get(command, [])
    out = invoke(command, *args, "--db", NO_HOST)
    assert out.code == 3, out.text
    assert "does not resolve" in out.flat and "check the host" in out.flat, out.text


@pytest.mark.postgres
def test_a_database_that_does_not_exist_says_how_to_create_it(pg_url, tmp_path, grid):
    url = sa.make_url(pg_url).set(database="sweeper_no_such_db").render_as_string(hide_password=False)
    for args in (("status",), ("enqueue", str(grid))):
        out = invoke(*args, "--db", url)
        assert out.code == 3, out.text
        assert 'database "sweeper_no_such_db" does not exist' in out.flat, out.text
        assert "createdb" in out.flat and "fix the database name" in out.flat, out.text
    proc = run_cli("work", "--workers", "1", "--db", url, "--state", str(tmp_path / "s"), "--no-tracking", timeout=90)
    assert proc.returncode == 3 and "createdb" in " ".join(proc.stderr.split()), proc.stderr


@pytest.mark.postgres
def test_a_login_the_server_refuses_says_to_check_user_and_password(pg_url):
    # The test server trusts every known user (no password to get wrong): an unknown role is refused.
    url = sa.make_url(pg_url).set(username="sweeper_no_such_user").render_as_string(hide_password=False)
    out = invoke("status", "--db", url)
    assert out.code == 3, out.text
    assert "refused user 'sweeper_no_such_user'" in out.flat, out.text
    assert "check the user and password in the URL" in out.flat and "pg_hba.conf" in out.flat, out.text


@pytest.mark.parametrize("command", ["status", "enqueue"])
def test_interactive_commands_give_up_on_a_refused_connection_after_3s(refused_url, grid, command):
    out = invoke(command, *([str(grid)] if command == "enqueue" else []), "--db", refused_url)
    assert out.code == 3, out.text
    port = refused_url.rsplit(":", 1)[1].split("/")[0]
    assert "did not answer for 3s" in out.flat, out.text
    assert f"nothing accepts connections at 127.0.0.1:{port}" in out.flat, out.text


def test_a_worker_waiting_out_an_outage_says_why_and_how_long_is_left_every_10s(tmp_path, refused_url):
    proc = run_cli(
        "work", "--workers", "1", "--db", refused_url, "--state", str(tmp_path / "s"), "--no-tracking",
        "--db-outage-limit", "11", timeout=120,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 3, text
    lines = text.splitlines()
    first = [ln for ln in lines if "database unreachable" in ln]
    again = [ln for ln in lines if "database still unreachable after 10s" in ln]
    assert len(first) == 1 and "Connection refused" in first[0] and "retrying for up to 11s" in first[0], text
    assert len(again) == 1 and "Connection refused" in again[0] and re.search(r"giving up in \d+s", again[0]), text
    assert "did not answer for 11s" in text and "Traceback" not in text, text


def test_the_reminders_come_every_remind_every_s_until_the_limit(refused_url):
    lines: list[str] = []
    policy = OutagePolicy(limit_s=3.0, remind_every_s=0.5, log=lines.append)
    with pytest.raises(DatabaseUnavailable, match="did not answer for 3s"):
        open_database(refused_url, outage=policy)
    reminders = [ln for ln in lines if ln.startswith("database still unreachable")]
    assert lines[0].startswith("database unreachable while trying to open the queue"), lines
    assert len(reminders) >= 2, lines  # every 0.5 s of the 3 s; a loaded machine may delay some
    assert all("Connection refused" in ln and "giving up in" in ln for ln in reminders), lines


def test_a_name_that_stops_resolving_after_the_database_answered_is_an_outage():
    """On the first contact an unresolvable name is a typo; later it is the network (a laptop
    waking up, a VPN reconnecting), to be waited out like a refused connection."""
    engine = sa.create_engine(NO_HOST.replace("postgresql:", "postgresql+psycopg:"))
    try:
        with pytest.raises(sa.exc.OperationalError) as caught:
            engine.connect()
    finally:
        engine.dispose()
    url = engine.url
    assert connect_problem(caught.value, url, "masked", first_contact=True) is not None
    assert connect_problem(caught.value, url, "masked", first_contact=False) is None
