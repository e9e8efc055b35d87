"""Feeds stored events, in store order, to everything derived from them: the validation
index, the catalog, the audit log, and the data keys of purged personal data."""

import logging
import threading
from collections.abc import Sequence
from typing import cast

from eventsourcing.persistence import Notification
from sqlalchemy.exc import SQLAlchemyError

from projections.audit import AuditLog
from projections.catalog import Catalog
from projections.index import ValidationIndex
from service.application import KeyStore
from service.domain import ApiKey

BATCH = 500
log = logging.getLogger(__name__)


class Projector:
    def __init__(
        self, app: KeyStore, index: ValidationIndex, catalog: Catalog, audit: AuditLog
    ) -> None:
        self.app = app
        self.index = index
        self.catalog = catalog
        self.audit = audit
        self._lock = threading.Lock()
        self._positions = {"catalog": catalog.position, "audit": audit.position}

    @property
    def logged_position(self) -> int:
        """How far the audit log has come."""
        return self._positions["audit"]

    def catch_up(self) -> int:
        """Apply everything the store holds beyond what the projections have seen.
        Returns the position the index has reached."""
        with self._lock:
            while True:
                start = min(self.index.position, *self._positions.values())
                notifications = self.app.recorder.select_notifications(
                    start=start, limit=BATCH, inclusive_of_start=False
                )
                if not notifications:
                    return self.index.position
                events = self._decode(notifications)
                # The index first: it is memory and cannot fail, and a revocation must
                # hold at once even if a table is briefly unavailable.
                for row, event in events:
                    if row.id > self.index.position:
                        self.index.apply(row.id, event)
                        if isinstance(event, ApiKey.PersonalDataPurged):
                            self.app.data_keys.destroy(event.originator_id)
                self.index.position = notifications[-1].id
                try:
                    self.catalog.process((row.id, event) for row, event in events)
                    self._positions["catalog"] = notifications[-1].id
                    self.audit.process(events)
                    self._positions["audit"] = notifications[-1].id
                except SQLAlchemyError:
                    log.exception("projection update failed after position %d; will retry", start)
                    return self.index.position

    def _decode(
        self, notifications: Sequence[Notification]
    ) -> list[tuple[Notification, ApiKey.Event]]:
        """Stored rows that decode, with their events. A row that does not was altered
        outside edgekeys: it is logged and left out, and the service keeps serving."""
        events = []
        for row in notifications:
            try:
                event = cast(ApiKey.Event, self.app.mapper.to_domain_event(row))
            except Exception:
                log.error("stored event at position %d cannot be decoded (altered?)", row.id)
                continue
            events.append((row, event))
        return events
