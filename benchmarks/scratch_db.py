"""A throwaway queue database for a benchmark: a SQLite file, or a fresh PostgreSQL database."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

PG_ADMIN = os.environ.get("SWEEPER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def make_db(backend: str, root: Path) -> tuple[str, Callable[[], None]]:
    """(URL, drop) for `backend` ('sqlite' under `root`, or 'postgres'); call drop() when done."""
    if backend == "sqlite":
        return f"sqlite:///{root / 'queue.db'}", lambda: None
    name = f"sweeper_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), drop
