"""When each key was last validated successfully, without an event per validation.

The hot path only stores `now` under the key's name in a dict (`pending`). Every
`interval` seconds the replica writes what it noted to the catalog, where a later time
already recorded (by another replica, or worker) wins. So `last_use_time` lags by up to
the interval (and a crash loses at most that much); edge followers, having no
database, note nothing.
"""

import asyncio
import logging
from datetime import datetime

from projections.catalog import Catalog

log = logging.getLogger(__name__)


class LastUse:
    def __init__(self, catalog: Catalog, interval: float) -> None:
        self.catalog = catalog
        self.interval = interval
        self.pending: dict[str, datetime] = {}  # key name → last ALLOWED, not yet written

    def latest(self, name: str, recorded: datetime | None) -> datetime | None:
        """The later of the use `recorded` in the catalog and one noted here since."""
        noted = self.pending.get(name)
        if recorded is None or (noted is not None and noted > recorded):
            return noted
        return recorded

    async def flush(self) -> None:
        """Write what was noted. Runs on the event loop, so taking the notes is atomic
        with respect to the handlers that make them."""
        noted = dict(self.pending)
        self.pending.clear()
        try:
            await asyncio.to_thread(self.catalog.record_use, noted)
        except Exception:
            log.warning("could not record the last use of %d keys; will retry", len(noted))
            for name, at in noted.items():  # put them back, unless a later use came
                self.pending[name] = max(at, self.pending.get(name, at))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()
