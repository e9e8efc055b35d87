"""Every byte a store holds: its files on SQLite, every row of every table on PostgreSQL
(bytea as hex), for tests that search them for what must not be there."""

from pathlib import Path

import psycopg


def stored_bytes(database_url: str) -> bytes:
    if database_url.startswith("sqlite:///"):
        database = Path(database_url.removeprefix("sqlite:///"))
        files = [f for f in database.parent.iterdir() if f.name.startswith(database.name)]
        assert database in files
        return b"\n".join(f.read_bytes() for f in files)
    rows: list[str] = []
    with psycopg.connect(database_url.replace("+psycopg", "")) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        assert len(tables) >= 4
        for (table,) in tables:
            query = f'SELECT row_to_json(t)::text FROM "{table}" t'
            rows += [row for (row,) in connection.execute(query)]
    return "\n".join(rows).encode()
