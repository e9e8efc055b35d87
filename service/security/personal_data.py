"""Crypto-shredding of personal data (a key's display name and description).

Each API key gets a data key of its own (AES-256-GCM), kept in `personal_data_keys`
beside the event store. Events hold only ciphertext; purging a key destroys its data
key, so its events still replay and still verify (their bytes never change) but the
words are gone for good. With EDGEKEYS_ENCRYPTION_KEY the data keys are stored sealed
under it (service.security.sealing), so a copy of the database alone does not open them.
"""

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from eventsourcing.persistence import Transcoding

from service.domain.api_key import PersonalData
from service.security.sealing import Aead, Sealer, new_key
from service.storage.database import create_tables
from service.storage.recorders import Side

_metadata = sa.MetaData()
_keys = sa.Table(
    "personal_data_keys",
    _metadata,
    sa.Column("owner", sa.String(32), primary_key=True),  # the API key's aggregate ID, hex
    sa.Column("data_key", sa.LargeBinary, nullable=False),  # sealed with an encryption key
)


class DataKeys:
    """Per-API-key data keys: created on first use, destroyed with the key's purge."""

    def __init__(self, engine: sa.Engine, sealer: Sealer | None = None) -> None:
        self.engine = engine
        self.sealer = sealer  # with EDGEKEYS_ENCRYPTION_KEY: data keys are stored sealed
        create_tables(engine, _metadata)
        self._cache: dict[UUID, bytes | None] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # what `deferred` collects, on its thread

    def find(self, owner: UUID) -> bytes | None:
        with self._lock:
            if owner in self._cache:
                return self._cache[owner]
        with self.engine.connect() as conn:
            stored = conn.execute(
                sa.select(_keys.c.data_key).where(_keys.c.owner == owner.hex)
            ).scalar()
        found = None if stored is None else self._opened(stored, owner)
        with self._lock:
            self._cache[owner] = found
        return found

    def load(self, owners: Iterable[UUID]) -> None:
        """Bring the data keys of `owners` into memory, 500 a query: what decoding a
        page of events would otherwise fetch one query per event."""
        with self._lock:
            missing = [owner for owner in set(owners) if owner not in self._cache]
        found: dict[UUID, bytes | None] = dict.fromkeys(missing)  # None: destroyed, or never
        with self.engine.connect() as conn:
            for start in range(0, len(missing), 500):
                chunk = [owner.hex for owner in missing[start : start + 500]]
                query = sa.select(_keys.c.owner, _keys.c.data_key).where(_keys.c.owner.in_(chunk))
                for owner, stored in conn.execute(query):
                    found[UUID(owner)] = self._opened(stored, UUID(owner))
        with self._lock:
            for owner, data_key in found.items():
                self._cache.setdefault(owner, data_key)

    def find_or_create(self, owner: UUID) -> bytes:
        """Committed with the event that uses it (see `deferred`), or else before it, so
        no stored event is unreadable."""
        pending: dict[UUID, bytes] | None = getattr(self._local, "pending", None)
        if pending is not None:
            return self._deferred(owner, pending)
        if (found := self.find(owner)) is not None:
            return found
        data_key = new_key()
        with self.engine.connect() as conn, conn.execution_options(writing=True).begin():
            existing = conn.execute(
                sa.select(_keys.c.data_key).where(_keys.c.owner == owner.hex)
            ).scalar()
            if existing is None:
                conn.execute(_keys.insert(), self._row(owner, data_key))
        data_key = data_key if existing is None else self._opened(existing, owner)
        with self._lock:
            self._cache[owner] = data_key
        return data_key

    def _deferred(self, owner: UUID, pending: dict[UUID, bytes]) -> bytes:
        if (made := pending.get(owner)) is not None:
            return made
        new = owner in self._local.new
        if not new and (found := self.find(owner)) is not None:
            return found
        data_key = pending[owner] = new_key()
        row = self._row(owner, data_key)
        insert = "INSERT INTO personal_data_keys (owner, data_key) VALUES (?, ?)"
        if new:
            # Replaces a row left by an older edgekeys whose create failed after it had
            # committed the data key: no stored event used that one.
            insert += " ON CONFLICT (owner) DO UPDATE SET data_key = excluded.data_key"
        self._local.sides.append(Side(insert, (row["owner"], row["data_key"])))
        return data_key

    @contextmanager
    def deferred(self, sides: list[Side], new: Iterable[UUID] = ()) -> Iterator[None]:
        """Data keys created in this block, on this thread, commit with the events'
        transaction that the block runs (saves one commit per new key): their inserts
        are appended to `sides`, which the recorder reads once the events are encoded.
        They are known to other threads only once the block has succeeded.

        `new`: owners whose first event that transaction stores (it fails if they have
        any already), so none of their events can use an older data key: theirs is
        made without looking for one."""
        pending: dict[UUID, bytes] = {}
        self._local.sides, self._local.pending, self._local.new = sides, pending, set(new)
        try:
            yield
        finally:
            self._local.sides = self._local.pending = None
        with self._lock:
            self._cache.update(pending)

    def all(self) -> Iterator[tuple[UUID, bytes]]:
        """Every data key (to copy a store)."""
        with self.engine.connect() as conn:
            for owner, stored in conn.execute(sa.select(_keys.c.owner, _keys.c.data_key)):
                yield UUID(owner), self._opened(stored, UUID(owner))

    def put(self, owner: UUID, data_key: bytes) -> None:
        with self.engine.connect() as conn, conn.execution_options(writing=True).begin():
            conn.execute(_keys.insert(), self._row(owner, data_key))

    def _row(self, owner: UUID, data_key: bytes) -> dict[str, object]:
        stored = self.sealer.seal(data_key, owner.bytes) if self.sealer else data_key
        return {"owner": owner.hex, "data_key": stored}

    def _opened(self, stored: bytes, owner: UUID) -> bytes:
        return self.sealer.open(stored, owner.bytes) if self.sealer else stored

    def destroyed(self, owner: UUID) -> list[Side]:
        """The statements that destroy `owner`'s data key inside the transaction that
        records its purge (`service.storage.recorders`): the purge stored means the key gone.
        On SQLite the row is overwritten with zeros (secure_delete)."""
        secure = [Side("PRAGMA secure_delete = ON")] if self.engine.dialect.name == "sqlite" else []
        return [*secure, Side("DELETE FROM personal_data_keys WHERE owner = ?", (owner.hex,))]

    def forget(self, owner: UUID) -> None:
        """Drop a destroyed data key from memory (every replica does, at the purge)."""
        with self._lock:
            self._cache[owner] = None

    def destroy_purged(self, purged: Iterable[UUID]) -> int:
        """Destroy whatever data keys of purged keys remain (a store purged before purges
        were one transaction, and crashed in between). Idempotent. Returns how many."""
        purged = list(purged)
        owners = [owner.hex for owner in purged]
        destroyed = 0
        with self.engine.connect() as conn, conn.execution_options(writing=True).begin():
            for start in range(0, len(owners), 500):
                chunk = owners[start : start + 500]
                destroyed += conn.execute(_keys.delete().where(_keys.c.owner.in_(chunk))).rowcount
        for owner in purged:
            self.forget(owner)
        return destroyed

    def checkpoint(self) -> bool:
        """On SQLite, copy the WAL into the database and empty it, so no page written
        before a purge (the words, a data key) stays in the files. False when a reader
        in another process held it back (the next purge, or the next start, finishes it)."""
        if self.engine.dialect.name != "sqlite":
            return True
        with self.engine.connect() as conn:
            # A pooled connection that has read nothing since the store turned to WAL
            # mode takes it for a rollback journal, and its checkpoint does not run
            # (log -1) yet says no reader was in its way: a read first.
            conn.exec_driver_sql("SELECT 1 FROM sqlite_master LIMIT 1").all()
            conn.rollback()  # the read's snapshot would hold the checkpoint back
            busy, log, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        return not busy and log != -1


class PersonalDataAsCiphertext(Transcoding):
    """Stores PersonalData encrypted under its owner's data key."""

    type = PersonalData
    name = "personal_data"

    def __init__(self, data_keys: DataKeys) -> None:
        self.data_keys = data_keys

    def encode(self, obj: PersonalData) -> dict[str, str | None]:
        if obj.text is None:  # erased (in a snapshot taken after a purge)
            return {"owner": obj.owner.hex, "sealed": None}
        aead = Aead(self.data_keys.find_or_create(obj.owner))
        return {"owner": obj.owner.hex, "sealed": aead.seal_text(obj.text, obj.owner.bytes)}

    def decode(self, data: dict[str, Any]) -> PersonalData:
        owner = UUID(data["owner"])
        data_key = self.data_keys.find(owner) if data["sealed"] is not None else None
        if data_key is None:
            return PersonalData(owner, None)
        try:
            return PersonalData(owner, Aead(data_key).open_text(data["sealed"], owner.bytes))
        except ValueError:
            raise ValueError(f"personal data of {owner} fails authentication") from None
