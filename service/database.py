"""Where the data lives: the event store's settings and a SQL engine for what is kept
beside it, both from one database URL."""

from pathlib import Path
from typing import Any

import sqlalchemy as sa

LOCK_TIMEOUT = 30  # seconds a writer waits for SQLite's write lock


def store_environment(database_url: str) -> dict[str, str]:
    """eventsourcing's settings for a database URL (see README, "Configuration")."""
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        if not path:
            raise ValueError(
                "sqlite URL has no file: use sqlite:///relative.db or sqlite:////abs.db"
            )
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": str(LOCK_TIMEOUT),  # other workers may hold the lock
        }
    raise ValueError(f"unsupported database URL {database_url!r}: expected sqlite:///FILE")


def create_tables(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Create what is missing, holding the write lock from the start: workers starting
    together on a new database would otherwise fail to upgrade a read lock."""
    with engine.connect() as conn, conn.execution_options(writing=True).begin():
        metadata.create_all(conn)


def sql_engine(database_url: str) -> sa.Engine:
    """SQLAlchemy, for the read models and data keys kept beside the event store."""
    if not database_url.startswith("sqlite:"):
        return sa.create_engine(database_url)
    engine = sa.create_engine(database_url, connect_args={"timeout": LOCK_TIMEOUT})

    # A transaction started with execution option `writing=True` takes SQLite's write
    # lock when it begins, not at its first write: with several workers, one then waits
    # for another's catalog update and sees its tracking position, instead of failing
    # to upgrade a read lock.
    @sa.event.listens_for(engine, "connect")
    def configure(connection: Any, record: Any) -> None:
        connection.isolation_level = None  # no implicit BEGIN: the listener below
        # Overwrite what is deleted or replaced, so purged personal data and destroyed
        # data keys leave no copy in free pages.
        connection.execute("PRAGMA secure_delete = ON")

    @sa.event.listens_for(engine, "begin")
    def begin(connection: sa.Connection) -> None:
        writing = connection.get_execution_options().get("writing", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

    return engine
