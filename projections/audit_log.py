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

import bisect
import hashlib
import multiprocessing
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import sqlalchemy as sa
from eventsourcing.persistence import Notification

from service.domain.api_key import ApiKey
from service.domain.names import key_project

GENESIS = bytes(32)
PAGE = 20_000  # rows per query of a verification: few round trips, bounded memory
ROW_HEAD = struct.Struct(">Q16sQ")  # position, originator ID, version, as a link frames them
CHUNK_PAGES = 5  # pages per call of a child: a stop is heeded within a second
# A check with fewer rows than this left runs on the caller's thread: starting a child
# process costs more than it saves (and every start of a small store would pay it).
ELSEWHERE_FROM = PAGE * CHUNK_PAGES
INFINITE = 2**63  # beyond every position
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
# The heads verified so far, each sealed onto the one before: a start verifies only what
# came after the newest, and a checkpoint edited in place breaks its seal.
audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("link", sa.LargeBinary(32), nullable=False),
    sa.Column("seal", sa.LargeBinary(32), nullable=False),
)


def event_type(topic: str) -> str:
    """`edgekeys:KeyCreated` → `KeyCreated`: the stable name auditors filter by."""
    return topic.rpartition(":")[2]


class Interrupted(Exception):
    """A verification stopped before its end."""


def link(previous: bytes, row: Notification) -> bytes:
    """The chain link of a stored row: every field length-prefixed, nothing ambiguous."""
    originator_id = cast(UUID, row.originator_id)
    return chained(
        previous, row.id, originator_id.bytes, row.originator_version, framed(row.topic), row.state
    )


def framed(topic: str) -> bytes:
    """A topic as a link frames it: its length, then its bytes."""
    encoded = topic.encode()
    return len(encoded).to_bytes(4, "big") + encoded


def chained(
    previous: bytes, position: int, originator: bytes, version: int, topic: bytes, state: bytes
) -> bytes:
    """The link after `previous` of one stored row (`topic` already `framed`): what both
    `link` and a verification's raw rows compute."""
    return hashlib.sha256(
        b"".join(
            (
                previous,
                ROW_HEAD.pack(position, originator, version),
                topic,
                len(state).to_bytes(4, "big"),
                state,
            )
        )
    ).digest()


def seal(previous: bytes, sequence: int, position: int, head_link: bytes) -> bytes:
    """A stored checkpoint's seal: SHA-256 over the previous seal, its number, its
    position and the link there."""
    return hashlib.sha256(
        previous + sequence.to_bytes(8, "big") + position.to_bytes(8, "big") + head_link
    ).digest()


def _broken_seal(stored: Sequence[sa.Row]) -> tuple[int, str] | None:  # type: ignore[type-arg]
    """(position, problem) of the first stored checkpoint whose seal does not hold."""
    previous, position = GENESIS, 0
    for expected, checkpoint in enumerate(stored, start=1):
        if (
            checkpoint.sequence != expected
            or checkpoint.position <= position
            or bytes(checkpoint.seal)
            != seal(previous, checkpoint.sequence, checkpoint.position, bytes(checkpoint.link))
        ):
            return checkpoint.position, f"stored checkpoint {expected} does not match its seal"
        previous, position = bytes(checkpoint.seal), checkpoint.position
    return None


def _first(row: Sequence[object]) -> int:
    return cast(int, row[0])


def _uuid_text_bytes(value: object) -> bytes:
    """SQLite stores originator IDs as canonical UUID text."""
    return bytes.fromhex(cast(str, value).replace("-", ""))


def _uuid_bytes(value: object) -> bytes:
    return cast(UUID, value).bytes


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
    verified_from: int = 0  # the links after this position were recomputed


@dataclass
class Walk:
    """A verification under way: how far it got, and its first problem."""

    previous: bytes = GENESIS  # the link at `head`
    head: int = 0
    start: int = 0
    after: int = 0  # the position read up to
    checked: int = 0
    done: bool = False  # the end reached, or a problem found
    bad_position: int = 0
    problem: str = ""

    def fail(self, position: int, problem: str) -> None:
        self.bad_position, self.problem = position, f"position {position}: {problem}"

    def failed(self, position: int, problem: str) -> Verification:
        self.fail(position, problem)
        return self.result()

    def result(self) -> Verification:
        return Verification(
            not self.problem,
            self.bad_position,
            self.checked,
            self.head,
            self.previous,
            self.problem,
            self.start,
        )


class AuditLog:
    def __init__(
        self, engine: sa.Engine, events_table: str, *, verify_elsewhere: bool = False
    ) -> None:
        """`verify_elsewhere`: recompute links in a child process, whose work never
        holds this process's GIL (a serving process: validation latency must not move
        while a verification runs)."""
        self.engine = engine
        self.events_table = events_table
        # The store's own position column: SQLite's rowid, PostgreSQL's notification_id.
        self._position = "rowid" if engine.dialect.name == "sqlite" else "notification_id"
        with engine.connect() as conn, conn.execution_options(writing=True).begin():
            metadata.create_all(conn)  # under the write lock, as the catalog does
        self._names: dict[UUID, str] = {}
        self.chain = Chain(engine, events_table)
        self._elsewhere = verify_elsewhere
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()

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
        incremental: bool = False,
        batch: int = PAGE,
        stop: threading.Event | None = None,
    ) -> Verification:
        """Recompute the links from the stored rows: every one, or (`incremental`) only
        those after the stored checkpoint, the head an earlier check verified. Without a
        project, also check that each logged position still has its row and each row is
        logged; with one, check the links of that project's events only. The stored
        checkpoints' own chain is checked either way, and a full check also holds each
        of them against the chain it recomputed. An unscoped check that passes stores
        its head as the next checkpoint. Raises Interrupted once `stop` is set (the
        server is stopping: a long check must not hold it up)."""
        logged_head = self.position
        with self.engine.connect() as conn:
            stored = conn.execute(
                sa.select(audit_checkpoints).order_by(audit_checkpoints.c.sequence)
            ).all()
            walk = Walk()
            broken = _broken_seal(stored)
            if broken is not None:
                return walk.failed(*broken)
            if incremental and stored:
                base = stored[-1]
                logged = conn.execute(
                    sa.select(audit_log.c.link).where(audit_log.c.position == base.position)
                ).scalar()
                if base.position > logged_head:
                    return walk.failed(
                        logged_head + 1,
                        f"history ends before stored checkpoint {base.sequence} "
                        f"(position {base.position})",
                    )
                if logged != base.link:
                    return walk.failed(
                        base.position, f"the log does not match stored checkpoint {base.sequence}"
                    )
                walk = Walk(
                    previous=base.link, head=base.position, start=base.position, after=base.position
                )
            walk = self._recompute(walk, project, logged_head, batch, stop)
            if walk.problem:
                return walk.result()
            if not incremental:
                self._hold_checkpoints(conn, walk, stored)
            if checkpoint is not None and not walk.problem:
                at, digest = checkpoint
                if at > walk.head:
                    walk.fail(walk.head + 1, f"history ends before checkpoint {at}")
                elif self._link_at(conn, at) != digest:
                    walk.fail(at, "checkpoint does not match")
        if not walk.problem and project is None:
            self._store_checkpoint(walk.head, walk.previous)
        return walk.result()

    def _recompute(
        self,
        walk: Walk,
        project: str | None,
        logged_head: int,
        batch: int,
        stop: threading.Event | None,
    ) -> Walk:
        """The chain recomputed a chunk at a time, heeding `stop` between chunks."""
        while not walk.done:
            if stop is not None and stop.is_set():
                raise Interrupted(f"the audit check stopped at position {walk.after}")
            walk = self._chunk(walk, project, logged_head, batch)
        return walk

    def _chunk(self, walk: Walk, project: str | None, logged_head: int, batch: int) -> Walk:
        if not self._elsewhere or logged_head - walk.after < ELSEWHERE_FROM:
            return self.chain.recompute(walk, project, logged_head, batch, CHUNK_PAGES)
        with self._pool_lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"))
            pool = self._pool
        url = self.engine.url.render_as_string(hide_password=False)
        return pool.submit(
            _recompute_elsewhere,
            url,
            self.events_table,
            walk,
            project,
            logged_head,
            batch,
            CHUNK_PAGES,
        ).result()

    def close(self) -> None:
        """Stop the verifying child process, if one was started."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _link_at(conn: sa.Connection, position: int) -> bytes | None:
        found = conn.execute(
            sa.select(audit_log.c.link).where(audit_log.c.position == position)
        ).scalar()
        return None if found is None else bytes(found)

    def _hold_checkpoints(
        self,
        conn: sa.Connection,
        walk: "Walk",
        stored: Sequence[sa.Row],  # type: ignore[type-arg]
    ) -> None:
        """Each stored checkpoint must lie on the chain just recomputed."""
        for checkpoint in stored:
            if checkpoint.position > walk.head:
                walk.fail(
                    walk.head + 1,
                    f"history ends before stored checkpoint {checkpoint.sequence} "
                    f"(position {checkpoint.position})",
                )
                return
            if self._link_at(conn, checkpoint.position) != checkpoint.link:
                walk.fail(
                    checkpoint.position,
                    f"stored checkpoint {checkpoint.sequence} is not on the chain",
                )
                return

    def _store_checkpoint(self, head: int, head_link: bytes) -> None:
        """Chain the verified head onto the stored checkpoints, unless one already
        covers it (a concurrent check got there first)."""
        if head == 0:
            return
        with self.engine.connect() as conn, conn.execution_options(writing=True).begin():
            last = conn.execute(
                sa.select(audit_checkpoints).order_by(audit_checkpoints.c.sequence.desc()).limit(1)
            ).first()
            if last is not None and last.position >= head:
                return
            sequence = last.sequence + 1 if last is not None else 1
            previous = bytes(last.seal) if last is not None else GENESIS
            conn.execute(
                audit_checkpoints.insert(),
                {
                    "sequence": sequence,
                    "position": head,
                    "link": head_link,
                    "seal": seal(previous, sequence, head, head_link),
                },
            )

    def stored_checkpoint(self) -> tuple[int, bytes] | None:
        """The newest stored checkpoint: (position, link)."""
        with self.engine.connect() as conn:
            last = conn.execute(
                sa.select(audit_checkpoints.c.position, audit_checkpoints.c.link)
                .order_by(audit_checkpoints.c.sequence.desc())
                .limit(1)
            ).first()
        return None if last is None else (int(last.position), bytes(last.link))


class Chain:
    """Recomputes links from the stored rows, reading only: in the serving process or
    in a verifying child process (see Verifier)."""

    def __init__(self, engine: sa.Engine, events_table: str) -> None:
        self.engine = engine
        self.events_table = events_table
        # The store's own position column: SQLite's rowid, PostgreSQL's notification_id.
        self._position = "rowid" if engine.dialect.name == "sqlite" else "notification_id"
        self._topics: dict[str, bytes] = {}  # topic → its framing in a link
        self._uuid_bytes: Callable[[object], bytes] = (
            _uuid_text_bytes if engine.dialect.name == "sqlite" else _uuid_bytes
        )

    def recompute(
        self, walk: "Walk", project: str | None, logged_head: int, batch: int, pages: int
    ) -> "Walk":
        """Walk the logged entries and the stored rows side by side, a page of each
        per query, recomputing links, from `walk.after` on: until the end or the first
        problem (then `walk.done`), or for `pages` pages."""
        # Plain DB-API cursors: SQLAlchemy's Row objects were a fifth of the time.
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        rows_query = (
            f"SELECT {self._position}, originator_id, originator_version, topic, state "
            f"FROM {self.events_table} WHERE {self._position} > {mark} "
            f"ORDER BY {self._position} LIMIT {mark}"
        )
        entries_query = (
            f"SELECT position, project, link FROM {audit_log.name} WHERE position > {mark} "
            f"ORDER BY position LIMIT {mark}"
        )
        with self.engine.connect() as conn, closing(conn.connection.cursor()) as cursor:
            for _ in range(pages):
                if not self._page(
                    cursor, rows_query, entries_query, walk, project, logged_head, batch
                ):
                    walk.done = True
                    break
        return walk

    def _page(
        self,
        cursor: Any,  # the driver's own (DB-API)
        rows_query: str,
        entries_query: str,
        walk: "Walk",
        project: str | None,
        logged_head: int,
        batch: int,
    ) -> bool:
        """One page of each; False once the walk is over."""
        after = walk.after
        cursor.execute(rows_query, (after, batch))
        rows = cursor.fetchall()
        cursor.execute(entries_query, (after, batch))
        entries = cursor.fetchall()
        if not rows and not entries:
            return False
        # Only up to where both pages are complete.
        last = min(
            entries[-1][0] if len(entries) == batch else INFINITE,
            rows[-1][0] if len(rows) == batch else INFINITE,
        )
        if last == INFINITE:
            last = max(entries[-1][0] if entries else 0, rows[-1][0] if rows else 0)
        n = bisect.bisect_right(rows, last, key=_first)
        m = bisect.bisect_right(entries, last, key=_first)
        if not self._check(walk, rows, n, entries, m, project, logged_head):
            return False
        walk.after = last
        return True

    def _check(
        self,
        walk: "Walk",
        rows: Sequence[Sequence[Any]],
        n: int,
        entries: Sequence[Sequence[Any]],
        m: int,
        project: str | None,
        logged_head: int,
    ) -> bool:
        """Check rows[:n] against entries[:m] (both sorted by position); False once
        the walk is over (a problem, or rows committed after the check began)."""
        previous, checked, digest = walk.previous, walk.checked, self._digest
        i = j = 0
        while i < n or j < m:
            if i < n and j < m and rows[i][0] == entries[j][0]:
                # The usual case, by far: a stored row and its entry.
                row = rows[i]
                position, entry_project, stored_link = entries[j]
                if project is None or entry_project == project:
                    if digest(previous, row) != stored_link:
                        walk.checked, walk.previous = checked, previous
                        walk.fail(position, "stored event does not match its link")
                        return False
                    checked += 1
                previous = stored_link
                walk.head = position
                i += 1
                j += 1
            elif j >= m or (i < n and rows[i][0] < entries[j][0]):
                position = rows[i][0]
                walk.checked, walk.previous = checked, previous
                if position > logged_head:
                    return False  # committed after this check began, not logged yet
                if project is None:
                    walk.fail(position, "event not in the log")
                    return False
                i += 1
            else:
                position, entry_project, stored_link = entries[j]
                if project is None or entry_project == project:
                    walk.checked, walk.previous = checked, previous
                    walk.fail(position, "event row missing")
                    return False
                previous = stored_link
                walk.head = position
                j += 1
        walk.checked, walk.previous = checked, bytes(previous)
        return True

    def _digest(self, previous: bytes, row: Sequence[object]) -> bytes | None:
        """link() over a row as selected, without building a Notification; None for a
        row too garbled to frame (which then matches no link)."""
        position, originator_id, version, topic, state = row
        try:
            topic_framed = self._topics.get(topic)  # type: ignore[call-overload]
            if topic_framed is None:
                topic_framed = self._topics[topic] = framed(cast(str, topic))  # type: ignore[index]
            uuid = self._uuid_bytes(originator_id)
            if len(uuid) != 16:
                return None
            return chained(
                previous,
                cast(int, position),
                uuid,
                cast(int, version),
                topic_framed,
                cast(bytes, state),
            )
        except (ValueError, TypeError, AttributeError, OverflowError, struct.error):
            return None


_chains: dict[tuple[str, str], Chain] = {}  # in a verifying child process


def _recompute_elsewhere(
    url: str,
    events_table: str,
    walk: Walk,
    project: str | None,
    logged_head: int,
    batch: int,
    pages: int,
) -> Walk:
    """Chain.recompute in the verifying child process, with an engine of its own."""
    chain = _chains.get((url, events_table))
    if chain is None:
        chain = _chains[(url, events_table)] = Chain(sa.create_engine(url), events_table)
    return chain.recompute(walk, project, logged_head, batch, pages)


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
