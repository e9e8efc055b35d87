"""A database of its own for each test, on the PostgreSQL server the tests are given
(`EDGEKEYS_TEST_POSTGRES`, default the local one), dropped afterwards."""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

SERVER = os.environ.get("EDGEKEYS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL server reachable at {SERVER}: {error}")


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database."""
    name = f"edgekeys_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        with _admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def terminate(database_url: str, application_name: str) -> int:
    """Kill the server side of the named connections to the database: how many."""
    return terminate_where(database_url, "application_name = %s", (application_name,))


def terminate_where(database_url: str, condition: str, params: tuple[str, ...] = ()) -> int:
    """Kill the server side of the connections to the database that `condition` (SQL
    on pg_stat_activity) selects: how many."""
    database = database_url.rsplit("/", 1)[1]
    with _admin() as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = %s AND {condition}",
            (database, *params),
        ).fetchone()
    return int(killed[0]) if killed else 0
