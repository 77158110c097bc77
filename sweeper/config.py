"""Where things live: the queue database, the state directory, the tracking store."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE = "./state"

# scheme://user:password@host -> scheme://user:***@host. The password runs to the *last* '@' of
# the URL (drivers accept an unescaped '@' in it: p@ss@host), so it is every non-space character
# up to there; where something after the URL holds an '@' too this hides a little more, never less.
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>\S*)(?P<tail>@)")
# ...?password=secret&sslmode=require, and libpq's key=value form: password=secret host=db
_PASSWORD_PARAM = re.compile(
    r"(?P<head>(?<![A-Za-z0-9_])(?:ssl)?(?:password|passwd|pwd)\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'?|[^&\s'\",;)]+)",
    re.IGNORECASE,
)


def mask_password(text: str) -> str:
    """Hide every password in `text`: in a URL's user part, or given as password=... (query or DSN).

    Used on every line we print or log, and on errors before they are stored in the queue.
    """
    text = _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _PASSWORD_PARAM.sub(lambda m: f"{m['head']}***", text)


@dataclass(frozen=True)
class Settings:
    """Resolved locations for one command. Built once in the CLI and passed down."""

    state_dir: Path
    db_url: str
    tracking_uri: str | None  # None: tracking switched off

    @property
    def display_db(self) -> str:
        return mask_password(self.db_url)

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")


def default_db_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir.resolve() / 'queue.db'}"


# The MLflow store of a queue on PostgreSQL: a database of its own on the same server, named after
# the queue's. Not a schema in the queue's database: MLflow has tables of its own named like ours
# (`jobs`), and a schema is chosen per connection (search_path), which poolers such as PgBouncer
# drop; a database is part of the connection itself, so MLflow's tables can never land among
# the queue's. It is created on first use (needs CREATEDB; otherwise create it once by hand).
MLFLOW_DB_SUFFIX = "_mlflow"


def default_tracking_uri(state_dir: Path, db_url: str | None = None) -> str:
    """SQLite queue: <state>/mlflow.db. PostgreSQL queue: database <queuedb>_mlflow on the same server,
    so that every machine working on the sweep logs to one store."""
    if db_url is not None and is_postgres(db_url):
        return postgres_tracking_uri(db_url)
    return f"sqlite:///{state_dir.resolve() / 'mlflow.db'}"


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql", "postgres:"))


def postgres_tracking_uri(db_url: str) -> str:
    import sqlalchemy as sa

    url = sa.make_url(normalize_db_url(db_url))
    name = (url.database or "postgres")[: 63 - len(MLFLOW_DB_SUFFIX)] + MLFLOW_DB_SUFFIX  # 63: PostgreSQL's limit
    return url.set(database=name).render_as_string(hide_password=False)


def resolve_settings(
    state: str | os.PathLike[str] | None = None,
    db: str | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
) -> Settings:
    """Options win over environment variables, which win over defaults under the state dir."""
    state_dir = Path(state or os.environ.get("SWEEPER_STATE") or DEFAULT_STATE).expanduser()
    db_url = db or os.environ.get("SWEEPER_DB") or default_db_url(state_dir)
    uri: str | None = None
    if tracking:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(state_dir, db_url)
    return Settings(state_dir=state_dir, db_url=normalize_db_url(db_url), tracking_uri=uri)


def normalize_db_url(url: str) -> str:
    """Accept the URLs users copy from their providers and pick our PostgreSQL driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
