"""Feeds stored events, in store order, to everything derived from them: the validation
index, the catalog and the audit log; and tells of each purge (its data key is gone)."""

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, Mapper, Notification
from sqlalchemy.exc import SQLAlchemyError

from projections.audit_log import AuditLog
from projections.catalog import Catalog
from projections.index import Entry, ValidationIndex
from service.domain.api_key import ApiKey

BATCH = 5000  # events a page: a page is one transaction for each read model
RECALL = 20_000  # changes journaled when the index is loaded from the catalog
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lag:
    """How far one projection is behind the store (or an edge follower behind its
    upstream): in events, and in seconds since it was last caught up (0 when it is)."""

    projection: str
    events: int
    seconds: float


def since(moment: float | None) -> float:
    """Seconds since a time.monotonic() moment; 0 for never."""
    return 0.0 if moment is None else max(0.0, time.monotonic() - moment)


class Projector:
    """Reads the store with `recorder` (its notification log) and `mapper` (stored rows
    to events); `on_purged` hears of every purge it passes, once the catalog has blanked
    the key's words; `prefetch` is handed the keys of each page before it is decoded."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        mapper: Mapper[UUID],
        index: ValidationIndex,
        catalog: Catalog,
        audit: AuditLog,
        on_purged: Callable[[list[UUID]], None] = lambda owners: None,
        prefetch: Callable[[set[UUID]], None] = lambda owners: None,
    ) -> None:
        self.recorder = recorder
        self.mapper = mapper
        self.on_purged = on_purged
        self.prefetch = prefetch  # what decoding a page of events needs, fetched at once
        self.index = index
        self.catalog = catalog
        self.audit = audit
        self._lock = threading.Lock()
        self._positions = {"catalog": catalog.position, "audit": audit.position}
        # time.monotonic() when each projection last reached the store's head (or started)
        self._synced = dict.fromkeys(("index", "catalog", "audit"), time.monotonic())

    def load_index(self) -> None:
        """Start the index from the catalog when the catalog is ahead of it: the
        catalog has folded those events already, and replaying them all would take
        seconds per million. Deployment sets are shared between keys that have the
        same ones, as most keys do."""
        shared: dict[str, frozenset[str]] = {}

        def deployments(listed: str) -> frozenset[str]:
            if (found := shared.get(listed)) is None:
                found = shared[listed] = frozenset(json.loads(listed))
            return found

        with self._lock, self.catalog.live_keys() as (position, keys):
            if position > self.index.position:
                self.index.load(
                    position,
                    (
                        (
                            k.id,
                            Entry(
                                k.secret_sha256,
                                k.name,
                                deployments(k.deployments),
                                k.expire_time,
                                (k.previous_secret_until and k.previous_secret_sha256) or b"",
                                k.previous_secret_until,
                            ),
                        )
                        for k in keys
                    ),
                )
                self._recall(position)
                log.info("validation index loaded from the catalog at position %d", position)

    def _recall(self, position: int) -> None:
        """Journal the last RECALL changes before `position` in the index just loaded,
        so an edge follower that was that close resumes instead of starting over."""
        start = max(0, position - RECALL)
        rows = self.recorder.select_notifications(
            start=start, limit=RECALL, stop=position, inclusive_of_start=False
        )
        touched = [(row.id, cast(UUID, row.originator_id)) for row in rows]
        names = self.catalog.names({key_id for _, key_id in touched})
        self.index.recall(start, [(p, k, names[k]) for p, k in touched if k in names])

    @property
    def logged_position(self) -> int:
        """How far the audit log has come."""
        return self._positions["audit"]

    def catch_up(self) -> int:
        """Apply everything the store holds beyond what the projections have seen.
        Returns the position the index has reached.

        The index always reaches the head: it is memory, and a revocation must hold at
        once. A table that fails to update (its database briefly unavailable) is left
        behind, logged, and retried at the next catch-up."""
        with self._lock:
            behind: set[str] = set()
            while True:
                start = min(
                    [self.index.position]
                    + [p for name, p in self._positions.items() if name not in behind]
                )
                notifications = self.recorder.select_notifications(
                    start=start, limit=BATCH, inclusive_of_start=False
                )
                if not notifications:
                    now = time.monotonic()
                    for name in self._synced.keys() - behind:
                        self._synced[name] = now
                    return self.index.position
                events = self._decode(notifications)
                fresh = [(row, event) for row, event in events if row.id > self.index.position]
                for row, event in fresh:
                    self.index.apply(row.id, event)
                self.index.position = notifications[-1].id
                for name, update in (
                    ("catalog", self._update_catalog),
                    ("audit", self.audit.process),
                ):
                    if name in behind:
                        continue
                    # Another replica may have been first (see Catalog.process).
                    unseen = [
                        (row, event) for row, event in events if row.id > self._positions[name]
                    ]
                    try:
                        if unseen:
                            update(unseen)
                        self._positions[name] = notifications[-1].id
                    except (SQLAlchemyError, ValueError):
                        log.exception("%s update failed after position %d; will retry", name, start)
                        behind.add(name)
                self._forget_purged(events)

    def _forget_purged(self, events: Sequence[tuple[Notification, ApiKey.Event]]) -> None:
        """A purge destroyed its data key with its event (see KeyStore.purge_key); once
        the catalog has blanked its words too, whoever keeps copies is told."""
        purged = [e.originator_id for _, e in events if isinstance(e, ApiKey.PersonalDataPurged)]
        if purged:
            self.on_purged(purged)

    def lags(self, head: int) -> list[Lag]:
        """How far each projection is behind `head`, the store's last position."""
        positions = {"index": self.index.position, **self._positions}
        lags = []
        for name, position in positions.items():
            events = max(0, head - position)
            lags.append(Lag(name, events, since(self._synced[name]) if events else 0.0))
        return lags

    def _update_catalog(self, events: Sequence[tuple[Notification, ApiKey.Event]]) -> None:
        self.catalog.process((row.id, event) for row, event in events)

    def _decode(
        self, notifications: Sequence[Notification]
    ) -> list[tuple[Notification, ApiKey.Event]]:
        """Stored rows that decode, with their events. A row that does not was altered
        outside edgekeys: it is logged and left out, and the service keeps serving."""
        self.prefetch({cast(UUID, row.originator_id) for row in notifications})
        events = []
        for row in notifications:
            try:
                event = cast(ApiKey.Event, self.mapper.to_domain_event(row))
            except Exception:
                log.error("stored event at position %d cannot be decoded (altered?)", row.id)
                continue
            events.append((row, event))
        return events
