"""The fixtures reach what they claim to reach."""

import sqlalchemy as sa


def test_postgres_fixture_gives_an_empty_database(pg_url):
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from pg_tables where schemaname = 'public'")).scalar() == 0
    engine.dispose()
