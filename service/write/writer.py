"""The write path: every write on one thread, then the projections, before the reply."""

import asyncio
import contextvars
import functools
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from projections.projector import Projector
from service.domain.errors import StaleEtag
from service.storage.database import UNREACHABLE, StoreUnavailable
from service.write.keystore import Conflict

T = TypeVar("T")
log = logging.getLogger(__name__)
# On a version conflict with another writer (another replica), when no etag pins the
# version: attempts, after a random pause that grows, so that two replicas hammering one
# key stop colliding in step. The pause is taken off the writer's thread: other writes
# go on meanwhile.
MAX_ATTEMPTS = 12
BACKOFF = 0.002  # seconds, doubled at each attempt, at most 0.1


class Writer:
    """Runs every write on one thread and brings the projections up to date before
    the caller hears back, so a change holds for the very next request.

    A write that cannot reach the store marks it unreachable (`on_unreachable`, called
    on the writer's thread); until `reachable()` says otherwise the writes queued
    behind it fail at once instead of each waiting on the database in turn."""

    def __init__(
        self,
        projector: Projector,
        on_projected: Callable[[], None],
        observe: Callable[[float], None],
        reachable: Callable[[], bool] = lambda: True,
        on_unreachable: Callable[[BaseException], None] = lambda error: None,
    ) -> None:
        self.projector = projector
        self.on_projected = on_projected  # called on the event loop after each write
        self.reachable = reachable
        self.on_unreachable = on_unreachable
        self.observe = observe  # each write's seconds (edgekeys_store_write_seconds)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgekeys-writer")

    async def run(self, write: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Make a change to the store (timed: edgekeys_store_write_seconds), then
        bring the projections up to date. A change that lost a race with another
        writer (Conflict) is queued again after a pause."""
        change = functools.partial(self._write, functools.partial(write, *args, **kwargs))
        for attempt in range(MAX_ATTEMPTS):
            try:
                return await self._on_thread(change)
            except Conflict:
                await asyncio.sleep(random.uniform(0, min(BACKOFF * 2**attempt, 0.1)))
        raise StaleEtag("the key is changing too fast; try again")

    async def catch_up(self, first: Callable[[], object] = lambda: None) -> None:
        """Bring the projections up to date (after `first`) on the writers' thread; a
        store that cannot be read raises here (the poller's probe)."""

        def catch_up() -> None:
            first()
            self.projector.catch_up()

        await self._on_thread(catch_up)

    async def _on_thread(self, call: Callable[[], T]) -> T:
        # In the caller's context: the lines logged on the writer's thread name its method.
        on_thread = functools.partial(contextvars.copy_context().run, call)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, on_thread)
        finally:
            self.on_projected()

    def _write(self, change: Callable[[], T]) -> T:
        """On the writer's thread: the change, then the projections."""
        if not self.reachable():
            raise StoreUnavailable()
        started = time.perf_counter()
        try:
            return change()
        except UNREACHABLE as error:
            log.warning("a write could not reach the store: %s", error)
            self.on_unreachable(error)
            raise StoreUnavailable() from error
        finally:
            self.observe(time.perf_counter() - started)
            if self.reachable():
                self._project()

    def _project(self) -> None:
        try:
            self.projector.catch_up()
        except Exception:  # the write is committed; the poller catches up later
            log.exception("projection after a write failed")

    def close(self) -> None:
        self._thread.shutdown(wait=True)
