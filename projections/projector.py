"""Feeds stored events, in store order, to the validation index and the catalog."""

import threading
from typing import cast
from uuid import UUID

from eventsourcing.application import Application

from projections.catalog import Catalog
from projections.index import ValidationIndex
from service.domain import ApiKey

BATCH = 500


class Projector:
    def __init__(self, app: Application[UUID], index: ValidationIndex, catalog: Catalog) -> None:
        self.app = app
        self.index = index
        self.catalog = catalog
        self._lock = threading.Lock()
        self._catalog_position = catalog.position

    def catch_up(self) -> int:
        """Apply everything the store holds beyond what the projections have seen.
        Returns the position both have reached."""
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
                self.catalog.process(events)
                self._catalog_position = events[-1][0]
                for position, event in events:
                    if position > self.index.position:
                        self.index.apply(position, event)
