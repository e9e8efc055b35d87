"""The event store's recorders, as edgekeys uses them.

Two changes to the library's own (eventsourcing.sqlite, eventsourcing.postgres), chosen
with `APPLICATION_RECORDER_TOPIC`:

- `Side` statements run inside the transaction that inserts the events, so what must
  hold exactly when the events do (a request id's record, a purged key's destroyed data
  key) commits or rolls back with them: `app.save(key, side=[...])`.
- On PostgreSQL, a call that cannot reach the database fails at once instead of being
  retried for about 20 s on the caller's thread (the library retries ten times): the
  single writer must not stall, and the caller hears UNAVAILABLE and may retry.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor
from psycopg import Cursor
from psycopg.rows import DictRow


@dataclass(frozen=True)
class Side:
    """One SQL statement for the events' transaction, with `?` placeholders."""

    sql: str
    params: tuple[Any, ...] = ()


def _sides(kwargs: dict[str, Any]) -> Iterable[Side]:
    sides: Iterable[Side] = kwargs.get("side", ())
    return sides


class SQLiteRecorder(SQLiteApplicationRecorder):
    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        positions = super()._insert_events(c, stored_events, **kwargs)
        for side in _sides(kwargs):
            c.execute(side.sql, side.params)
        return positions


class PostgresRecorder(PostgresApplicationRecorder):
    # The library's methods without their retry decorator (functools.wraps keeps the
    # original as __wrapped__).
    _insert = PostgresApplicationRecorder.insert_events.__wrapped__
    _select = PostgresApplicationRecorder.select_notifications.__wrapped__
    _events = PostgresApplicationRecorder.select_events.__wrapped__
    _head = PostgresApplicationRecorder.max_notification_id.__wrapped__

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        positions: Sequence[int] | None = self._insert(stored_events, **kwargs)
        return positions

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # Runs first in the library's pipelined transaction, before the table lock.
        for side in _sides(kwargs):
            curs.execute(side.sql.replace("?", "%s"), side.params)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        found: Sequence[Notification] = self._select(
            start, limit, stop, topics, inclusive_of_start=inclusive_of_start
        )
        return found

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        found: Sequence[StoredEvent] = self._events(
            originator_id, gt=gt, lte=lte, desc=desc, limit=limit
        )
        return found

    def max_notification_id(self) -> int | None:
        head: int | None = self._head()
        return head


SQLITE_TOPIC = f"{__name__}:SQLiteRecorder"
POSTGRES_TOPIC = f"{__name__}:PostgresRecorder"
