"""The audit log over a PostgreSQL store: the same chain, read from the library's own
events table, finds the same tampering."""

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from tests.conftest import FakeClock, RunningServer
from tests.postgres import fresh_database


@pytest.fixture
def on_postgres(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[RunningServer, str]]:
    with fresh_database() as url:
        server = RunningServer(database=tmp_path / "unused.db", clock=clock, database_url=url)
        yield server.start(), url
        server.stop()


def test_an_edited_event_row_is_found_at_its_position_on_postgres(
    on_postgres: tuple[RunningServer, str],
) -> None:
    running, url = on_postgres
    names = [running.create(display_name=f"key {i}").api_key.name for i in range(3)]
    audit = audit_pb2_grpc.AuditServiceStub(running.channel)
    listed = audit.ListEvents(apb.ListEventsRequest(parent="projects/acme"))
    assert [e.position for e in listed.events] == [1, 2, 3]
    assert [e.api_key for e in listed.events] == names
    untouched = audit.VerifyAuditLog(apb.VerifyAuditLogRequest())
    assert (untouched.ok, untouched.events_checked) == (True, 3)

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "UPDATE keystore_events SET state = set_byte(state, 9, get_byte(state, 9) # 1) "
            "WHERE notification_id = 2"
        )
    tampered = audit.VerifyAuditLog(apb.VerifyAuditLogRequest())
    assert (tampered.ok, tampered.first_bad_position) == (False, 2)
