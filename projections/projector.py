"""Feeds stored events, in store order, to the validation index and the catalog."""

import logging
import threading
from typing import cast
from uuid import UUID

from eventsourcing.application import Application
from sqlalchemy.exc import SQLAlchemyError

from projections.catalog import Catalog
from projections.index import ValidationIndex
from service.domain import ApiKey

BATCH = 500
log = logging.getLogger(__name__)


class Projector:
    def __init__(self, app: Application[UUID], index: ValidationIndex, catalog: Catalog) -> None:
        self.app = app
        self.index = index
        self.catalog = catalog
        self._lock = threading.Lock()
        self._catalog_position = catalog.position

    def catch_up(self) -> int:
        """Apply everything the store holds beyond what the projections have seen.
        Returns the position the index has reached."""
        with self._lock:
            while True:
                start = min(self.index.position, self._catalog_position)
                notifications = self.app.recorder.select_notifications(
                    start=start, limit=BATCH, inclusive_of_start=False
                )
                if not notifications:
                    return self.index.position
                events = [
                    (n.id, cast(ApiKey.Event, self.app.mapper.to_domain_event(n)))
                    for n in notifications
                ]
                # The index first: it is memory and cannot fail, and a revocation must
                # hold at once even if the catalog's database is briefly unavailable.
                for position, event in events:
                    if position > self.index.position:
                        self.index.apply(position, event)
                try:
                    self.catalog.process(events)
                except SQLAlchemyError:
                    log.exception("catalog update failed at position %d; will retry", start)
                    return self.index.position
                self._catalog_position = events[-1][0]
