"""The audit log: every stored event bound into one hash chain, and indexed by project,
key, type and time for the AuditService.

The chain is global, in store order: link(p) = SHA-256(link(previous) ‖ the stored row
at p), over the row exactly as the event store holds it (position, aggregate ID,
version, topic, state bytes). One chain over the whole store is what makes a deleted,
inserted or reordered event detectable, not just an edited one; a checkpoint (position
and link) kept by an auditor outside the database extends that to history rewritten
wholesale or cut off at the end. Links are written in the same transaction as the
rows that index them, right after each event is committed, and never recomputed.
"""

import hashlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from uuid import UUID

import sqlalchemy as sa
from eventsourcing.persistence import Notification

from service.domain.api_key import ApiKey
from service.domain.names import key_project

GENESIS = bytes(32)
NAMES_CACHED = 100_000  # key names kept in memory; the rest are read from the log

metadata = sa.MetaData()
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("api_key", sa.String(200), nullable=False),
    sa.Column("project", sa.String(63), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("occur_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("link", sa.LargeBinary(32), nullable=False),
    sa.Index("audit_log_by_project", "project", "position"),
    sa.Index("audit_log_by_key", "key_id", "position"),
)


def event_type(topic: str) -> str:
    """`edgekeys:KeyCreated` → `KeyCreated`: the stable name auditors filter by."""
    return topic.rpartition(":")[2]


class Interrupted(Exception):
    """A verification stopped before its end."""


def link(previous: bytes, row: Notification) -> bytes:
    """The chain link of a stored row: every field length-prefixed, nothing ambiguous."""
    originator_id = cast(UUID, row.originator_id)
    topic = row.topic.encode()
    return hashlib.sha256(
        b"".join(
            (
                previous,
                row.id.to_bytes(8, "big"),
                originator_id.bytes,
                row.originator_version.to_bytes(8, "big"),
                len(topic).to_bytes(4, "big"),
                topic,
                len(row.state).to_bytes(4, "big"),
                row.state,
            )
        )
    ).digest()


@dataclass(frozen=True)
class Entry:
    """One audit log row."""

    position: int
    api_key: str
    version: int
    event_type: str
    link: bytes


@dataclass(frozen=True)
class Verification:
    ok: bool
    first_bad_position: int
    events_checked: int
    head_position: int
    head_link: bytes
    problem: str


class AuditLog:
    def __init__(self, engine: sa.Engine, events_table: str) -> None:
        self.engine = engine
        self.events_table = events_table
        # The store's own position column: SQLite's rowid, PostgreSQL's notification_id.
        self._position = "rowid" if engine.dialect.name == "sqlite" else "notification_id"
        with engine.connect() as conn, conn.execution_options(writing=True).begin():
            metadata.create_all(conn)  # under the write lock, as the catalog does
        self._names: dict[UUID, str] = {}

    @property
    def position(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(audit_log.c.position))).scalar() or 0)

    def process(self, rows: Iterable[tuple[Notification, ApiKey.Event]]) -> None:
        """Chain and index the rows after the last one logged, in one transaction."""
        if len(self._names) > NAMES_CACHED:
            # Between batches only: a key created in this batch is not in the table yet.
            self._names.clear()
        with self.engine.connect() as conn, conn.execution_options(writing=True).begin():
            head = conn.execute(
                sa.select(audit_log.c.position, audit_log.c.link)
                .order_by(audit_log.c.position.desc())
                .limit(1)
            ).first()
            position, previous = (head[0], head[1]) if head else (0, GENESIS)
            entries = []
            for row, event in rows:
                name = self._name(conn, event)
                if row.id <= position or name is None:
                    # A key whose creation did not decode stays out of the log, and
                    # VerifyAuditLog names the gap.
                    continue
                previous = link(previous, row)
                position = row.id
                entries.append(
                    {
                        "position": row.id,
                        "key_id": event.originator_id.hex,
                        "api_key": name,
                        "project": key_project(name),
                        "version": event.originator_version,
                        "event_type": event_type(row.topic),
                        "occur_time": event.timestamp,
                        "link": previous,
                    }
                )
            if entries:
                conn.execute(audit_log.insert(), entries)

    def _name(self, conn: sa.Connection, event: ApiKey.Event) -> str | None:
        if isinstance(event, ApiKey.KeyCreated):
            self._names[event.originator_id] = event.name
        if event.originator_id not in self._names:
            name = conn.execute(
                sa.select(audit_log.c.api_key)
                .where(audit_log.c.key_id == event.originator_id.hex)
                .limit(1)
            ).scalar()
            if name is None:
                return None
            self._names[event.originator_id] = name
        return self._names[event.originator_id]

    def entries(
        self,
        *,
        project: str | None = None,
        key_id: UUID | None = None,
        after: int = 0,
        limit: int = 100,
        event_types: Sequence[str] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> list[tuple[Entry, Notification]]:
        """Logged events with their stored rows, in store order."""
        query = (
            sa.select(audit_log)
            .where(audit_log.c.position > after)
            .order_by(audit_log.c.position)
            .limit(limit)
        )
        if project is not None:
            query = query.where(audit_log.c.project == project)
        if key_id is not None:
            query = query.where(audit_log.c.key_id == key_id.hex)
        if event_types:
            query = query.where(audit_log.c.event_type.in_(event_types))
        if start_time is not None:
            query = query.where(audit_log.c.occur_time >= start_time)
        if end_time is not None:
            query = query.where(audit_log.c.occur_time < end_time)
        with self.engine.connect() as conn:
            logged = conn.execute(query).mappings().all()
            rows = self._rows(conn, [entry["position"] for entry in logged])
        return [
            (
                Entry(e["position"], e["api_key"], e["version"], e["event_type"], e["link"]),
                rows[e["position"]],
            )
            for e in logged
            if e["position"] in rows
        ]

    def version_at(self, key_id: UUID, moment: datetime) -> int | None:
        """The key's version at `moment`: that of its last event at or before it."""
        with self.engine.connect() as conn:
            version = conn.execute(
                sa.select(sa.func.max(audit_log.c.version)).where(
                    audit_log.c.key_id == key_id.hex, audit_log.c.occur_time <= moment
                )
            ).scalar()
        return None if version is None else int(version)

    def _rows(self, conn: sa.Connection, positions: list[int]) -> dict[int, Notification]:
        if not positions:
            return {}
        query = sa.text(
            f"SELECT {self._position} AS position, originator_id, originator_version, "
            f"topic, state FROM {self.events_table} WHERE {self._position} IN :positions"
        ).bindparams(sa.bindparam("positions", expanding=True))
        return {
            row.position: _notification(row)
            for row in conn.execute(query, {"positions": positions})
        }

    def verify(
        self,
        *,
        project: str | None = None,
        checkpoint: tuple[int, bytes] | None = None,
        batch: int = 2000,
        stop: threading.Event | None = None,
    ) -> Verification:
        """Recompute every link from the stored rows. Without a project, also check that
        each logged position still has its row and each row is logged; with one, check
        the links of that project's events only. Raises Interrupted once `stop` is set
        (the server is stopping: a long check must not hold it up)."""
        checked = 0
        previous, head = GENESIS, 0
        logged_head = self.position
        for entry_project, position, stored_link, row in self._walk(batch):
            if stop is not None and stop.is_set():
                raise Interrupted(f"the audit check stopped at position {position}")
            if stored_link is None and position > logged_head:
                break  # committed after this check began, not logged yet
            if project is None or entry_project == project:
                problem = (
                    "event row missing"
                    if row is None
                    else "event not in the log"
                    if stored_link is None
                    else "stored event does not match its link"
                    if link(previous, row) != stored_link
                    else None
                )
                if problem:
                    return self._failed(position, checked, previous, head, problem)
                checked += 1
            if stored_link is not None:
                previous, head = stored_link, position
        if checkpoint is not None:
            at, digest = checkpoint
            if at > head:
                return self._failed(
                    head + 1, checked, previous, head, f"history ends before checkpoint {at}"
                )
            with self.engine.connect() as conn:
                logged = conn.execute(
                    sa.select(audit_log.c.link).where(audit_log.c.position == at)
                ).scalar()
            if logged != digest:
                return self._failed(at, checked, previous, head, "checkpoint does not match")
        return Verification(True, 0, checked, head, previous, "")

    def _walk(
        self, batch: int
    ) -> Iterator[tuple[str | None, int, bytes | None, Notification | None]]:
        """Logged entries and stored rows side by side, by position: (project, position,
        link or None if not logged, row or None if missing)."""
        with self.engine.connect() as conn:
            after = 0
            while True:
                logged = conn.execute(
                    sa.select(audit_log.c.position, audit_log.c.project, audit_log.c.link)
                    .where(audit_log.c.position > after)
                    .order_by(audit_log.c.position)
                    .limit(batch)
                ).all()
                stored = conn.execute(
                    sa.text(
                        f"SELECT {self._position} AS position, originator_id, "
                        f"originator_version, topic, state FROM {self.events_table} "
                        f"WHERE {self._position} > :after ORDER BY {self._position} "
                        "LIMIT :batch"
                    ),
                    {"after": after, "batch": batch},
                ).all()
                if not logged and not stored:
                    return
                # Only up to where both listings are complete.
                last = min(
                    logged[-1].position if len(logged) == batch else float("inf"),
                    stored[-1].position if len(stored) == batch else float("inf"),
                )
                rows = {r.position: _notification(r) for r in stored if r.position <= last}
                entries = {e.position: e for e in logged if e.position <= last}
                for position in sorted(rows.keys() | entries.keys()):
                    entry = entries.get(position)
                    yield (
                        entry.project if entry else None,
                        position,
                        entry.link if entry else None,
                        rows.get(position),
                    )
                after = int(last) if last != float("inf") else max(rows.keys() | entries.keys())

    @staticmethod
    def _failed(
        position: int, checked: int, previous: bytes, head: int, problem: str
    ) -> Verification:
        return Verification(
            False, position, checked, head, previous, f"position {position}: {problem}"
        )


def _notification(row: sa.Row) -> Notification:  # type: ignore[type-arg]
    return Notification(
        id=row.position,
        originator_id=row.originator_id
        if isinstance(row.originator_id, UUID)
        else UUID(row.originator_id),
        originator_version=row.originator_version,
        topic=row.topic,
        state=bytes(row.state),
    )
