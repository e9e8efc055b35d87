"""Durability settings, read back from the connections the server itself uses: the event
store's (the eventsourcing library's pool) and the engine of the tables beside it."""

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from service.storage.database import LOCK_TIMEOUT
from tests.conftest import FakeClock, RunningServer
from tests.postgres import fresh_database

pytestmark = pytest.mark.both_stores


def store_setting(running: RunningServer, query: str) -> object:
    """`query`'s answer on one of the event store's own pooled connections."""
    datastore = running.server.store.keys.recorder.datastore  # type: ignore[attr-defined]
    with datastore.transaction(commit=False) as cursor:
        cursor.execute(query)
        row = cursor.fetchone()
    return next(iter(dict(row).values()))


def engine_setting(running: RunningServer, query: str) -> object:
    """`query`'s answer on the engine the catalog, audit log and data keys use."""
    with running.server.store.catalog.engine.connect() as conn:
        return conn.exec_driver_sql(query).scalar()


SETTINGS: dict[str, list[tuple[str, object]]] = {
    # synchronous: 2 is FULL, the WAL is synced at every commit.
    "sqlite": [
        ("PRAGMA journal_mode", "wal"),
        ("PRAGMA synchronous", 2),
        ("PRAGMA busy_timeout", LOCK_TIMEOUT * 1000),
    ],
    "postgresql": [("SHOW synchronous_commit", "on")],
}


@pytest.mark.parametrize("read", [store_setting, engine_setting])
def test_every_connection_commits_durably_and_waits_for_locks(
    running: RunningServer, read: Callable[[RunningServer, str], object]
) -> None:
    dialect = running.server.store.catalog.engine.dialect.name
    for query, expected in SETTINGS[dialect]:
        assert read(running, query) == expected, query


def test_the_engine_commits_durably_where_the_database_default_does_not(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A database whose default was relaxed (synchronous_commit = off, for speed) still
    gets durable commits from edgekeys' own engine."""
    with fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as admin:
            database = url.rsplit("/", 1)[1]
            admin.execute(f"ALTER DATABASE {database} SET synchronous_commit = off")
        running = RunningServer(tmp_path / "unused.db", clock, database_url=url).start()
        try:
            assert engine_setting(running, "SHOW synchronous_commit") == "on"
        finally:
            running.stop()
