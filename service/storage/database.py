"""Where the data lives: the event store's settings and a SQL engine for what is kept
beside it, both from one database URL.

- `sqlite:///relative.db`, `sqlite:////absolute.db`: embedded, one machine.
- `postgresql://user:password@host:port/dbname`: shared by several replicas.
"""

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from eventsourcing import persistence
from sqlalchemy.engine import URL, make_url

from service.storage import recorders

LOCK_TIMEOUT = 30  # seconds a writer waits for SQLite's write lock
CONNECT_TIMEOUT = 2  # seconds to reach PostgreSQL before a request fails UNAVAILABLE
# Writers of the tables beside the store hold this transaction-level advisory lock on
# PostgreSQL, as they hold SQLite's write lock: one replica at a time moves a projection
# and its tracking position, and every other replica sees that move before its own.
WRITE_LOCK = zlib.crc32(b"edgekeys projections")
SETUP_LOCK = zlib.crc32(b"edgekeys setup")  # held while a replica creates its tables
# What the database drivers raise when the database cannot be reached (or, for SQLite,
# stays locked): the request may succeed later, so UNAVAILABLE, not INTERNAL.
UNREACHABLE = (
    persistence.OperationalError,
    persistence.InterfaceError,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
)


class Unavailable(Exception):
    """The request may succeed later (UNAVAILABLE): `reason` says why not now."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


NOT_READY = "REPLICA_NOT_READY"  # starting, or cut off from its own source


class StoreUnavailable(Unavailable):
    """The event store cannot be reached."""

    def __init__(self) -> None:
        super().__init__(
            "STORE_UNAVAILABLE",
            "the event store is unreachable: changes and catalog reads are refused until "
            "it is back; ValidateApiKey still answers from memory. Retry later.",
        )


def is_postgres(database_url: str) -> bool:
    return database_url.startswith(("postgresql://", "postgres://"))


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
            "APPLICATION_RECORDER_TOPIC": recorders.SQLITE_TOPIC,
        }
    if is_postgres(database_url):
        url = _postgres_url(database_url)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": url.database or "",
            "POSTGRES_HOST": url.host or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": url.username or "",
            "POSTGRES_PASSWORD": url.password or "",
            "POSTGRES_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
            "POSTGRES_PRE_PING": "y",  # a connection that died in an outage is replaced
            "POSTGRES_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
            "POSTGRES_POOL_SIZE": "4",
            "POSTGRES_MAX_OVERFLOW": "8",
            "APPLICATION_RECORDER_TOPIC": recorders.POSTGRES_TOPIC,
        }
    raise ValueError(
        f"unsupported database URL {database_url!r}: expected sqlite:///FILE "
        "or postgresql://USER@HOST:PORT/DBNAME"
    )


def redacted(database_url: str) -> str:
    """The URL fit for a log line: no password."""
    if not is_postgres(database_url):
        return database_url
    return make_url(database_url).render_as_string(hide_password=True)


def _postgres_url(database_url: str) -> URL:
    try:
        url = make_url(database_url)
    except sa.exc.ArgumentError:
        raise ValueError(f"malformed database URL {database_url!r}") from None
    if url.query:
        # The event store's own connections take no URL options, so none are taken here.
        raise ValueError(
            f"database URL options {sorted(url.query)} are not supported: set TLS and other "
            "connection options with libpq's environment (PGSSLMODE, PGSSLROOTCERT, …)"
        )
    if not url.database or not url.username:
        raise ValueError(
            f"database URL {database_url!r} needs a user and a database: "
            "postgresql://USER@HOST:PORT/DBNAME"
        )
    return url.set(drivername="postgresql+psycopg")


def create_tables(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Create what is missing, holding the write lock from the start: replicas starting
    together on a new database would otherwise race to create the same table."""
    with engine.connect() as conn, conn.execution_options(writing=True).begin():
        metadata.create_all(conn)


@contextmanager
def exclusive_setup(engine: sa.Engine) -> Iterator[None]:
    """One process at a time opens a store and creates what is missing: concurrent
    CREATE TABLE IF NOT EXISTS can fail on PostgreSQL, and on SQLite a worker switching
    a new file to WAL mode fails while another holds the write lock."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({SETUP_LOCK})")
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({SETUP_LOCK})")
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.setup-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # the lock goes with the file


def sql_engine(database_url: str) -> sa.Engine:
    """SQLAlchemy, for the read models and data keys kept beside the event store.

    A transaction begun with the execution option `writing=True` holds the write lock
    from its start (SQLite's, or the advisory lock above on PostgreSQL)."""
    if is_postgres(database_url):
        return _postgres_engine(_postgres_url(database_url))
    return _sqlite_engine(database_url)


def _postgres_engine(url: URL) -> sa.Engine:
    engine = sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=4,
        max_overflow=8,
        pool_timeout=CONNECT_TIMEOUT,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "edgekeys",
            # Durable commits even where the database's default was relaxed for speed.
            "options": "-c synchronous_commit=on",
        },
    )

    @sa.event.listens_for(engine, "begin")
    def begin(connection: sa.Connection) -> None:
        if connection.get_execution_options().get("writing", False):
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")

    return engine


def _sqlite_engine(database_url: str) -> sa.Engine:
    engine = sa.create_engine(database_url, connect_args={"timeout": LOCK_TIMEOUT})

    # With several workers, one waits for another's catalog update and then sees its
    # tracking position, instead of failing to upgrade a read lock.
    @sa.event.listens_for(engine, "connect")
    def configure(connection: Any, record: Any) -> None:
        connection.isolation_level = None  # no implicit BEGIN: the listener below
        # Overwrite what is deleted or replaced, so purged personal data and destroyed
        # data keys leave no copy in free pages.
        connection.execute("PRAGMA secure_delete = ON")
        # SQLite's usual default, made explicit: the WAL is synced at every commit, so
        # an acknowledged change survives a power cut, not just a crash of the process.
        connection.execute("PRAGMA synchronous = FULL")

    @sa.event.listens_for(engine, "begin")
    def begin(connection: sa.Connection) -> None:
        writing = connection.get_execution_options().get("writing", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

    return engine
