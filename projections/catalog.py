"""The key catalog behind ListApiKeys: a SQL read model written with SQLAlchemy.

Each batch of events is applied in one transaction together with the catalog's
tracking position, so after a crash the catalog resumes exactly where its last
commit left it: no event missed, none applied twice.

Replicas sharing a PostgreSQL store share one catalog. Each of them feeds it every
event, and that is safe: an update holds the projections' write lock (see
`service.storage.database`) and skips what the tracking position says is done, so each event
is applied exactly once whatever the number of replicas, with no leader to elect and
nothing to fail over.
"""

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from service.domain.api_key import ApiKey
from service.domain.names import key_project

metadata = sa.MetaData()

keys = sa.Table(
    "catalog_api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # the aggregate's UUID, hex
    sa.Column("position", sa.BigInteger, nullable=False, unique=True),  # of KeyCreated
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("project", sa.String(63), nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),  # sealed with an encryption key
    sa.Column("description", sa.Text, nullable=False),  # sealed with an encryption key
    sa.Column("deployments", sa.Text, nullable=False),  # JSON list, in attach order
    sa.Column("expire_time", sa.DateTime(timezone=True)),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delete_time", sa.DateTime(timezone=True)),
    sa.Column("purge_time", sa.DateTime(timezone=True)),
    sa.Column("secret_hint", sa.String(64), nullable=False),
    sa.Column("secret_sha256", sa.LargeBinary(32), nullable=False),  # what the index needs
    # The secret before the last rotation, and until when it works (None: it stopped).
    sa.Column("previous_secret_sha256", sa.LargeBinary(32)),
    sa.Column("previous_secret_until", sa.DateTime(timezone=True)),
    sa.Column("version", sa.Integer, nullable=False),
    # Not from the events: written by the replicas that validated the key (LastUse).
    sa.Column("last_use_time", sa.DateTime(timezone=True)),
    sa.Index("catalog_api_keys_by_project", "project", "position"),
    sa.Index("catalog_api_keys_by_expiry", "project", "expire_time", "position"),
    sa.Index("catalog_api_keys_by_secret", "secret_sha256"),
    sa.Index("catalog_api_keys_by_previous_secret", "previous_secret_sha256"),
)
# ListApiKeys' total_size counts a project's live keys from this index alone (4 times
# faster than from the rows at 200,000 keys in one project, SQLite). Added after layout
# v4 was out: created in place on an existing catalog, not worth a rebuild.
_LIVE = sa.Index("catalog_api_keys_live", keys.c.project, keys.c.delete_time)

# GetApiKey's and LookupApiKey's queries, built once: building a select and its cache
# key on every call cost more than running it on SQLite.
_BY_NAME = sa.select(keys).where(keys.c.name == sa.bindparam("name"))
_BY_DIGEST = sa.select(keys).where(
    sa.or_(
        keys.c.secret_sha256 == sa.bindparam("digest"),
        keys.c.previous_secret_sha256 == sa.bindparam("digest"),
    )
)

key_deployments = sa.Table(
    "catalog_api_key_deployments",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("deployment", sa.String(200), primary_key=True),
    sa.Index("catalog_api_key_deployments_by_deployment", "deployment", "key_id"),
)

tracking = sa.Table(
    "catalog_tracking",
    metadata,
    sa.Column("projection", sa.String(32), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
)

# The tracking row's name carries the catalog's layout version: a catalog of another
# layout is dropped and rebuilt from the events (a read model is always disposable).
PROJECTION = "catalog v4"


class LiveKey(NamedTuple):
    """What the validation index needs of a key."""

    id: UUID
    name: str
    secret_sha256: bytes
    deployments: str  # JSON list
    expire_time: datetime | None
    previous_secret_sha256: bytes | None
    previous_secret_until: datetime | None


@dataclass(frozen=True)
class KeyRecord:
    """A catalog row, with the attribute names of the ApiKey aggregate."""

    name: str
    display_name: str
    description: str
    deployments: list[str]
    expire_time: datetime | None
    created_on: datetime
    modified_on: datetime
    delete_time: datetime | None
    purge_time: datetime | None
    secret_hint: str
    version: int
    position: int
    previous_secret_until: datetime | None
    last_use_time: datetime | None = None

    @classmethod
    def of(cls, key: ApiKey) -> "KeyRecord":
        """The record of a key as the aggregate has it (not stored: no position)."""
        return cls(
            key.name,
            key.display_name,
            key.description,
            list(key.deployments),
            key.expire_time,
            key.created_on,
            key.modified_on,
            key.delete_time,
            key.purge_time,
            key.secret_hint,
            key.version,
            0,
            key.previous_secret_until,
        )


class Sealer(Protocol):
    """Seals a text bound to a context (service.security.sealing.Sealer does)."""

    def seal_text(self, text: str, context: bytes) -> str: ...
    def open_text(self, sealed: str, context: bytes) -> str: ...


class Words:
    """Display names and descriptions as the catalog stores them: sealed (bound to their
    key) when there is an encryption key, else as they are."""

    def __init__(self, sealer: Sealer | None = None) -> None:
        self.sealer = sealer

    def stored(self, text: str, key_id: str) -> str:
        return self.sealer.seal_text(text, key_id.encode()) if self.sealer else text

    def shown(self, stored: str, key_id: str) -> str:
        return self.sealer.open_text(stored, key_id.encode()) if self.sealer else stored


class Catalog:
    def __init__(self, engine: Engine, sealer: Sealer | None = None) -> None:
        self.engine = engine
        self.words = Words(sealer)
        # Under the write lock from the start (see service.storage.database): replicas
        # starting together on a new database would otherwise race to create the tables.
        with engine.connect() as conn, conn.execution_options(writing=True).begin():
            metadata.create_all(conn)
            _LIVE.create(conn, checkfirst=True)
            if _position(conn) is None:  # new, or of another layout
                key_deployments.drop(conn)
                keys.drop(conn)
                metadata.create_all(conn)
                conn.execute(tracking.delete())
                conn.execute(tracking.insert(), {"projection": PROJECTION, "position": 0})

    @property
    def position(self) -> int:
        with self.engine.connect() as conn:
            return _position(conn) or 0

    def process(self, events: Iterable[tuple[int, ApiKey.Event]]) -> None:
        """Apply the events after the tracked position, and move it, atomically. The
        events are folded in memory first (see `_Fold`), so a batch costs a few
        statements however many events it holds."""
        with self.engine.connect() as conn, conn.execution_options(writing=True).begin():
            position = _position(conn) or 0
            fresh = [(at, event) for at, event in events if at > position]
            if not fresh:
                return
            _Fold(self.words, fresh).write(conn)
            conn.execute(
                tracking.update().where(tracking.c.projection == PROJECTION),
                {"position": fresh[-1][0]},
            )

    @contextmanager
    def live_keys(self, batch: int = 10_000) -> Iterator[tuple[int, Iterator[LiveKey]]]:
        """The position the catalog has reached, and the keys not deleted as of it,
        streamed: what a validation index starts from instead of replaying the store."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":  # one snapshot for both reads
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                position = _position(conn) or 0
                rows = conn.execution_options(yield_per=batch).execute(
                    sa.select(
                        keys.c.id,
                        keys.c.name,
                        keys.c.secret_sha256,
                        keys.c.deployments,
                        keys.c.expire_time,
                        keys.c.previous_secret_sha256,
                        keys.c.previous_secret_until,
                    ).where(keys.c.delete_time.is_(None))
                )
                yield (
                    position,
                    (
                        LiveKey(
                            UUID(row.id),
                            row.name,
                            row.secret_sha256,
                            row.deployments,
                            _utc(row.expire_time),
                            row.previous_secret_sha256,
                            _utc(row.previous_secret_until),
                        )
                        for row in rows
                    ),
                )

    def names(self, ids: Iterable[UUID], chunk: int = 1000) -> dict[UUID, str]:
        """The resource names of the keys with these aggregate IDs (deleted ones too)."""
        wanted = [key_id.hex for key_id in ids]
        found: dict[UUID, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), chunk):
                query = sa.select(keys.c.id, keys.c.name).where(
                    keys.c.id.in_(wanted[start : start + chunk])
                )
                found.update((UUID(row.id), row.name) for row in conn.execute(query))
        return found

    def list(
        self,
        project: str,
        *,
        after: int,
        limit: int,
        skip: int = 0,
        deployment: str = "",
        show_deleted: bool = False,
        expire_before: datetime | None = None,
        by_expiry: bool = False,
        after_expiry: datetime | None = None,
    ) -> list[KeyRecord]:
        """Keys of `project` created after store position `after`, oldest first; or,
        `by_expiry`, the keys that expire, soonest first, after (`after_expiry`, `after`);
        the first `skip` of them left out (SQL's OFFSET: the database steps over them)."""
        query = (
            sa.select(keys)
            .where(*_matching(project, deployment, show_deleted, expire_before, by_expiry))
            .limit(limit)
            .offset(skip)
        )
        if by_expiry:
            query = query.order_by(keys.c.expire_time, keys.c.position)
            if after_expiry is not None:
                query = query.where(
                    sa.tuple_(keys.c.expire_time, keys.c.position) > (after_expiry, after)
                )
        else:
            query = query.where(keys.c.position > after).order_by(keys.c.position)
        with self.engine.connect() as conn:
            return [_record(row, self.words) for row in conn.execute(query).mappings()]

    def count(
        self,
        project: str,
        *,
        deployment: str = "",
        show_deleted: bool = False,
        expire_before: datetime | None = None,
        by_expiry: bool = False,
    ) -> int:
        """How many keys `list` would give with these filters, over all its pages: one
        COUNT, on the same indexes as `list`."""
        matching = _matching(project, deployment, show_deleted, expire_before, by_expiry)
        query = sa.select(sa.func.count()).select_from(keys).where(*matching)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def purged(self) -> set[UUID]:
        """The keys whose personal data was purged."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(keys.c.id).where(keys.c.purge_time.is_not(None)))
            return {UUID(row.id) for row in rows}

    def get(self, name: str) -> KeyRecord | None:
        """The key named `name` (deleted keys too), with its last use."""
        return self._one(_BY_NAME, {"name": name})

    def lookup(self, digest: bytes) -> KeyRecord | None:
        """The key whose secret, or whose secret before its last rotation, has `digest`."""
        return self._one(_BY_DIGEST, {"digest": digest})

    def _one(self, query: sa.Select[Any], values: dict[str, object]) -> KeyRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(query, values).mappings().first()
        return None if row is None else _record(row, self.words)

    def record_use(self, uses: dict[str, datetime]) -> None:
        """Keys' last successful validations (name → when); a later one already
        recorded, by this replica or another, is kept."""
        if not uses:
            return
        later = sa.or_(keys.c.last_use_time.is_(None), keys.c.last_use_time < sa.bindparam("at"))
        statement = (
            keys.update()
            .where(keys.c.name == sa.bindparam("key"), later)
            .values(last_use_time=sa.bindparam("at"))
        )
        with self.engine.connect() as conn, conn.execution_options(writing=True).begin():
            conn.execute(statement, [{"key": k, "at": at} for k, at in uses.items()])


def _matching(
    project: str,
    deployment: str,
    show_deleted: bool,
    expire_before: datetime | None,
    by_expiry: bool,
) -> list[sa.ColumnElement[bool]]:
    """What a listed key satisfies, whatever the page (see `Catalog.list`)."""
    matching = [keys.c.project == project]
    if by_expiry:
        matching.append(keys.c.expire_time.is_not(None))
    if expire_before is not None:
        matching.append(keys.c.expire_time < expire_before)
    if not show_deleted:
        matching.append(keys.c.delete_time.is_(None))
    if deployment:
        attached = sa.select(key_deployments.c.key_id).where(
            key_deployments.c.deployment == deployment
        )
        matching.append(keys.c.id.in_(attached))
    return matching


def _position(conn: Connection) -> int | None:
    position = conn.execute(
        sa.select(tracking.c.position).where(tracking.c.projection == PROJECTION)
    ).scalar()
    return None if position is None else int(position)


class _Fold:
    """A batch of events folded into rows in memory: the keys it creates, whole; for
    the keys already in the catalog, the columns it changes (and, when their
    deployments change, their new set). `write` then stores it in a few statements
    (executemany), instead of a statement or three per event."""

    def __init__(self, words: Words, events: Sequence[tuple[int, ApiKey.Event]]) -> None:
        self.words = words
        self.new: dict[str, dict[str, Any]] = {}  # key id → its row
        self.changed: dict[str, dict[str, Any]] = {}  # key id → columns changed
        self.redeployed: set[str] = set()  # keys already stored whose deployments changed
        self.events = events

    def write(self, conn: Connection) -> None:
        created = {e.originator_id.hex for _, e in self.events if isinstance(e, ApiKey.KeyCreated)}
        stored = _current(
            conn, {e.originator_id.hex for _, e in self.events} - created
        )  # what the folding reads of keys already stored: their secret and deployments
        for position, event in self.events:
            key_id = event.originator_id.hex
            if isinstance(event, ApiKey.KeyCreated):
                self.new[key_id] = self._created(position, event)
                continue
            current = self.new.get(key_id) or stored.get(key_id)
            if current is None:
                continue  # its creation did not decode (altered outside edgekeys)
            changes = self._changes(event, current)
            current.update(changes)
            if key_id not in self.new:
                self.changed.setdefault(key_id, {}).update(changes)
                if "deployments" in changes:
                    self.redeployed.add(key_id)
        if self.new:
            conn.execute(keys.insert(), list(self.new.values()))
        by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
        for key_id, changes in self.changed.items():
            by_columns.setdefault(frozenset(changes), []).append({"_id": key_id, **changes})
        for rows in by_columns.values():
            conn.execute(keys.update().where(keys.c.id == sa.bindparam("_id")), rows)
        for chunk in _chunks(sorted(self.redeployed)):
            conn.execute(key_deployments.delete().where(key_deployments.c.key_id.in_(chunk)))
        attached = [
            {"key_id": key_id, "deployment": deployment}
            for key_id, row in (
                *self.new.items(),
                *((k, self.changed[k]) for k in sorted(self.redeployed)),
            )
            for deployment in json.loads(row["deployments"])
        ]
        if attached:
            conn.execute(key_deployments.insert(), attached)

    def _created(self, position: int, event: ApiKey.KeyCreated) -> dict[str, Any]:
        key_id = event.originator_id.hex
        return {
            "id": key_id,
            "position": position,
            "name": event.name,
            "project": key_project(event.name),
            "display_name": self.words.stored(event.display_name.shown, key_id),
            "description": self.words.stored(event.description.shown, key_id),
            "deployments": json.dumps(event.deployments),
            "expire_time": event.expire_time,
            "create_time": event.timestamp,
            "update_time": event.timestamp,
            "delete_time": None,
            "purge_time": None,
            "secret_hint": event.secret_hint,
            "secret_sha256": bytes.fromhex(event.secret_sha256),
            "previous_secret_sha256": None,
            "previous_secret_until": None,
            "last_use_time": None,
            "version": event.originator_version,
        }

    def _changes(self, event: ApiKey.Event, current: dict[str, Any]) -> dict[str, Any]:
        """The columns an event other than KeyCreated changes, given the key's row as
        the events before it left it (`current`: at least its secret and deployments)."""
        key_id = event.originator_id.hex
        changes: dict[str, Any] = {
            "update_time": event.timestamp,
            "version": event.originator_version,
        }
        match event:
            case ApiKey.DetailsChanged():
                if event.display_name is not None:
                    changes["display_name"] = self.words.stored(event.display_name.shown, key_id)
                if event.description is not None:
                    changes["description"] = self.words.stored(event.description.shown, key_id)
            case ApiKey.ExpiryChanged():
                changes["expire_time"] = event.expire_time
            case ApiKey.KeyDeleted():
                changes["delete_time"] = event.timestamp
            case ApiKey.SecretRotated():
                changes.update(
                    secret_sha256=bytes.fromhex(event.secret_sha256),
                    secret_hint=event.secret_hint,
                    # for LookupApiKey, even with no grace
                    previous_secret_sha256=current["secret_sha256"],
                    previous_secret_until=event.previous_until,
                )
            case ApiKey.PersonalDataPurged():
                erased = self.words.stored("", key_id)
                changes.update(purge_time=event.timestamp, display_name=erased, description=erased)
            case ApiKey.DeploymentAttached() | ApiKey.DeploymentDetached():
                deployments = json.loads(current["deployments"])
                if isinstance(event, ApiKey.DeploymentAttached):
                    deployments.append(event.deployment)
                elif event.deployment in deployments:
                    deployments.remove(event.deployment)
                changes["deployments"] = json.dumps(deployments)
        return changes


def _current(conn: Connection, key_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The secret and deployments of stored keys, by id: what folding their events reads."""
    found = {}
    for chunk in _chunks(sorted(key_ids)):
        rows = conn.execute(
            sa.select(keys.c.id, keys.c.secret_sha256, keys.c.deployments).where(
                keys.c.id.in_(chunk)
            )
        )
        found.update(
            {
                row.id: {"secret_sha256": row.secret_sha256, "deployments": row.deployments}
                for row in rows
            }
        )
    return found


def _chunks(values: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _record(row: sa.RowMapping, words: Words) -> KeyRecord:
    created = _utc(row["create_time"])
    modified = _utc(row["update_time"])
    assert created is not None and modified is not None
    return KeyRecord(
        name=row["name"],
        display_name=words.shown(row["display_name"], row["id"]),
        description=words.shown(row["description"], row["id"]),
        deployments=json.loads(row["deployments"]),
        expire_time=_utc(row["expire_time"]),
        created_on=created,
        modified_on=modified,
        delete_time=_utc(row["delete_time"]),
        purge_time=_utc(row["purge_time"]),
        secret_hint=row["secret_hint"],
        version=row["version"],
        position=row["position"],
        previous_secret_until=_utc(row["previous_secret_until"]),
        last_use_time=_utc(row["last_use_time"]),
    )
