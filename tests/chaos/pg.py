"""Control of the PostgreSQL server the tests use: restart it, cut connections, bring it back.

The cluster is found from the URL's port in `pg_lsclusters`, so a developer can point
SWEEPER_TEST_PG_URL at a private cluster (port 5433, say) and restart it without disturbing the
shared one. In CI it is the machine's main cluster.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa


class PostgresControlError(RuntimeError):
    pass


@dataclass(frozen=True)
class Cluster:
    version: str
    name: str
    port: int

    def ctl(self, action: str, timeout: float = 120) -> subprocess.CompletedProcess:
        if action in ("stop", "restart") and os.environ.get("PYTEST_XDIST_WORKER"):
            # Under pytest-xdist another process is running PostgreSQL tests against this server.
            raise PostgresControlError(
                f"refusing to {action} PostgreSQL beside parallel tests: mark the test `serial` "
                "(it then runs in the second pass, `pytest -m serial`, without -n)"
            )
        return subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def cluster_of(url: str) -> Cluster:
    """The local cluster serving `url` (matched by port)."""
    port = sa.make_url(url).port or 5432
    try:
        listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresControlError(f"cannot list PostgreSQL clusters: {exc}") from None
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == str(port):
            return Cluster(parts[0], parts[1], port)
    raise PostgresControlError(f"no local PostgreSQL cluster listens on port {port} (pg_lsclusters: {listing!r})")


def admin_url(url: str) -> sa.URL:
    return sa.make_url(url).set(database="postgres")


def is_up(url: str) -> bool:
    engine = sa.create_engine(admin_url(url), connect_args={"connect_timeout": 2}, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_up(url):
            return
        time.sleep(0.2)
    raise PostgresControlError(f"PostgreSQL on port {cluster_of(url).port} did not come back in {timeout:.0f}s")


def restart(url: str) -> float:
    """Restart the server (fast shutdown: every connection is cut). Returns the seconds it took."""
    cluster = cluster_of(url)
    tick = time.monotonic()
    proc = cluster.ctl("restart")
    if proc.returncode != 0:
        ensure_running(url)
        raise PostgresControlError(f"pg_ctlcluster restart failed: {proc.stderr.strip() or proc.stdout.strip()}")
    wait_up(url)
    return time.monotonic() - tick


def stop(url: str) -> None:
    proc = cluster_of(url).ctl("stop")
    if proc.returncode != 0:
        raise PostgresControlError(f"pg_ctlcluster stop failed: {proc.stderr.strip() or proc.stdout.strip()}")


def ensure_running(url: str) -> None:
    """Start the server if it is down; every test that stops it calls this in a finally."""
    if is_up(url):
        return
    cluster_of(url).ctl("start")
    wait_up(url)


@contextlib.contextmanager
def restored(url: str) -> Iterator[None]:
    """Whatever happens inside, PostgreSQL is running again afterwards (the rest of the suite needs it)."""
    try:
        yield
    finally:
        ensure_running(url)


def terminate_backends(url: str, application_name: str = "sweeper") -> int:
    """pg_terminate_backend on every connection of `application_name` to the URL's database."""
    database = sa.make_url(url).database
    engine = sa.create_engine(admin_url(url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return len(
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :app AND datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"app": application_name, "db": database},
                ).all()
            )
    finally:
        engine.dispose()
