"""The validation index: secret digest → what a gateway needs to know, in memory.

ValidateApiKey is a checksum, a SHA-256 and a dict lookup here; it never touches
the database. The index is rebuilt from the event store at start and then
follows it (see ``projections.projector``), or, on an edge follower, is fed entry by
entry from an upstream's index (see ``service.replication``). A bounded journal of
recent changes lets followers resume from a position instead of starting over.
"""

import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

from edgekeys.v1.validation_pb2 import (
    VERDICT_ALLOWED,
    VERDICT_DEPLOYMENT_NOT_ALLOWED,
    VERDICT_EXPIRED,
    VERDICT_MALFORMED,
    VERDICT_NOT_FOUND,
    Verdict,
)
from service.domain import keyformat
from service.domain.api_key import ApiKey


@dataclass(frozen=True, slots=True)
class Entry:
    digest: bytes
    name: str
    deployments: frozenset[str]
    expire_time: datetime | None
    # The secret before the last rotation, while in its grace period (until then).
    previous: bytes = b""
    previous_until: datetime | None = None


JOURNAL = 100_000  # changes remembered for followers that resume
_LOW = (1 << 64) - 1


class Journal:
    """The last `capacity` changes, each (position, key ID, key name), in a ring of
    arrays allocated once: 32 bytes a change, and no growth as it fills (a deque of
    tuples cost 150 bytes a change). Complete for every position after `start`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._positions = array("q", bytes(8 * capacity))
        self._ids = array("Q", bytes(16 * capacity))  # each key ID as two halves
        self.clear(0)

    def clear(self, start: int) -> None:
        self.start = start
        self._names = [""] * self.capacity
        self._next = 0  # the slot the next change goes to
        self._size = 0

    def append(self, position: int, key_id: int, name: str) -> None:
        i = self._next
        if self._size == self.capacity:
            self.start = self._positions[i]  # the oldest, about to be forgotten
        else:
            self._size += 1
        self._positions[i] = position
        self._ids[2 * i], self._ids[2 * i + 1] = key_id >> 64, key_id & _LOW
        self._names[i] = name
        self._next = (i + 1) % self.capacity

    def newest_first(self) -> Iterator[tuple[int, int, str]]:
        for back in range(1, self._size + 1):
            i = (self._next - back) % self.capacity
            yield self._positions[i], self._ids[2 * i] << 64 | self._ids[2 * i + 1], self._names[i]


class Change(NamedTuple):
    """A key changed at `position`: its entry as it is now (deleted: the key is gone)."""

    position: int
    entry: Entry
    deleted: bool


class ValidationIndex:
    """`check` reads without a lock: entries and maps are replaced, never changed in
    place where a reader could see half a change. Writers and the readers that need a
    consistent view (snapshot, changes_after) take the lock."""

    def __init__(self, journal: int | None = None) -> None:
        self.position = 0  # the last store position applied
        # Each key's entry under its digest, and under its previous one during a grace.
        self._by_digest: dict[bytes, Entry] = {}
        # By the key's aggregate ID as an int: 40 bytes a key fewer than UUID objects.
        self._by_id: dict[int, Entry] = {}
        self._lock = threading.Lock()
        # Each change as (position, key ID, key name). Not the entries: what a follower
        # needs is each key as it is now.
        self._journal = Journal(journal or JOURNAL)

    def __len__(self) -> int:
        return len(self._by_id)

    def check(self, secret: str, deployment: str, now: datetime) -> tuple[Verdict, Entry | None]:
        """The verdict for `secret` at `deployment`, and the key's entry when found."""
        if not keyformat.is_well_formed(secret):
            return VERDICT_MALFORMED, None
        digest = keyformat.digest(secret)
        entry = self._by_digest.get(digest)
        # A dict lookup by digest, not a comparison of secrets: a caller cannot steer a
        # SHA-256 toward a stored one, so there is no timing to learn from (DESIGN's
        # hmac.compare_digest after the lookup would only repeat the lookup's equality).
        if entry is None:
            return VERDICT_NOT_FOUND, None
        if digest != entry.digest and now >= entry.previous_until:  # type: ignore[operator]
            return VERDICT_NOT_FOUND, None  # rotated away, and its grace is over
        if entry.expire_time is not None and now >= entry.expire_time:
            return VERDICT_EXPIRED, entry
        if deployment not in entry.deployments:
            return VERDICT_DEPLOYMENT_NOT_ALLOWED, entry
        return VERDICT_ALLOWED, entry

    def apply(self, position: int, event: ApiKey.Event) -> None:
        """Fold one stored event into the index. Entries are replaced, never mutated,
        so a concurrent reader sees either the old entry or the new one."""
        key_id = event.originator_id.int
        with self._lock:
            self.position = position
            if key_id not in self._by_id and not isinstance(event, ApiKey.KeyCreated):
                return  # its creation did not decode (altered outside edgekeys): nothing to fold
            match event:
                case ApiKey.KeyCreated():
                    digest = bytes.fromhex(event.secret_sha256)
                    entry = Entry(
                        digest, event.name, frozenset(event.deployments), event.expire_time
                    )
                    self._put(position, key_id, entry)
                case ApiKey.KeyDeleted():
                    self._remove(position, key_id)
                case ApiKey.DeploymentAttached():
                    entry = self._by_id[key_id]
                    deployments = entry.deployments | {event.deployment}
                    self._put(position, key_id, replace(entry, deployments=deployments))
                case ApiKey.DeploymentDetached():
                    entry = self._by_id[key_id]
                    deployments = entry.deployments - {event.deployment}
                    self._put(position, key_id, replace(entry, deployments=deployments))
                case ApiKey.ExpiryChanged():
                    entry = replace(self._by_id[key_id], expire_time=event.expire_time)
                    self._put(position, key_id, entry)
                case ApiKey.SecretRotated():
                    entry = self._by_id[key_id]
                    rotated = replace(
                        entry,
                        digest=bytes.fromhex(event.secret_sha256),
                        previous=entry.digest if event.previous_until else b"",
                        previous_until=event.previous_until,
                    )
                    self._put(position, key_id, rotated)

    # An edge follower's index is fed entries, keyed by name, from its upstream's.

    def put(self, position: int, entry: Entry) -> None:
        """Add or replace the key named `entry.name` (its digest may have changed)."""
        key_id = ApiKey.id_for(entry.name).int
        with self._lock:
            self.position = max(self.position, position)
            self._put(position, key_id, entry)

    def remove(self, position: int, name: str) -> None:
        """Forget the key named `name`, if held."""
        with self._lock:
            self.position = max(self.position, position)
            key_id = ApiKey.id_for(name).int
            if key_id in self._by_id:
                self._remove(position, key_id)

    def reset(self, position: int, entries: list[Entry]) -> None:
        """Hold exactly `entries`, as of `position`: swapped in at once, so `check`
        sees the old index or the new one, never a half-loaded one."""
        self.load(position, ((ApiKey.id_for(entry.name), entry) for entry in entries))

    def load(self, position: int, keys: Iterable[tuple[UUID, Entry]]) -> None:
        """Hold exactly the entries of `keys` (by key ID), as of `position`."""
        by_digest: dict[bytes, Entry] = {}
        by_id: dict[int, Entry] = {}
        for key_id, entry in keys:
            by_digest[entry.digest] = entry
            if entry.previous:
                by_digest[entry.previous] = entry
            by_id[key_id.int] = entry
        with self._lock:
            self._by_digest, self._by_id = by_digest, by_id
            self.position = position
            self._journal.clear(position)

    def recall(self, start: int, touched: Sequence[tuple[int, UUID, str]]) -> None:
        """Fill the journal of an index just loaded (see `load`) with the changes at
        positions after `start`: (position, key ID, key name) of each, in order. Each is
        journaled with the key's entry as it is now, which is what a follower resuming
        from one of those positions needs: it converges on the same entries."""
        with self._lock:
            self._journal.clear(start)
            for position, key_id, name in touched:
                self._journal.append(position, key_id.int, name)

    # What followers read.

    def snapshot(self) -> tuple[int, list[Entry]]:
        """Every entry, and the position they hold as of."""
        with self._lock:
            return self.position, list(self._by_id.values())

    def changes_after(self, position: int) -> tuple[int, list[Change]] | None:
        """What changed after `position`, one change per key (its latest), oldest
        first; and the position they bring a follower to. None when the journal no
        longer reaches back that far, or `position` is beyond this index (it came from
        another store): the follower needs a snapshot."""
        with self._lock:
            if position < self._journal.start or position > self.position:
                return None
            latest: dict[int, tuple[int, str]] = {}
            for changed_at, key_id, name in self._journal.newest_first():
                if changed_at <= position:
                    break
                latest.setdefault(key_id, (changed_at, name))
            changes = []
            for key_id, (changed_at, name) in reversed(latest.items()):
                entry = self._by_id.get(key_id)
                gone = entry is None
                changes.append(
                    Change(changed_at, entry or Entry(b"", name, frozenset(), None), gone)
                )
            return self.position, changes

    def _put(self, position: int, key_id: int, entry: Entry) -> None:
        """Hold `entry` for the key, under its digests; drop digests it no longer has."""
        old = self._by_id.get(key_id)
        self._by_id[key_id] = entry
        self._by_digest[entry.digest] = entry
        if entry.previous:
            self._by_digest[entry.previous] = entry
        if old is not None:
            for digest in (old.digest, old.previous):
                if digest and digest not in (entry.digest, entry.previous):
                    del self._by_digest[digest]
        self._journal.append(position, key_id, entry.name)

    def _remove(self, position: int, key_id: int) -> None:
        entry = self._by_id.pop(key_id)
        for digest in (entry.digest, entry.previous):
            if digest:
                del self._by_digest[digest]
        self._journal.append(position, key_id, entry.name)
