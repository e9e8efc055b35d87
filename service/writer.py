"""The write path: every write on one thread, then the projections, before the reply."""

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from projections.projector import Projector
from service.metrics import Metrics

T = TypeVar("T")
log = logging.getLogger(__name__)


class Writer:
    """Runs every write on one thread and brings the projections up to date before
    the caller hears back, so a change holds for the very next request."""

    def __init__(
        self, projector: Projector, on_projected: Callable[[], None], metrics: Metrics
    ) -> None:
        self.projector = projector
        self.on_projected = on_projected  # called on the event loop after each write
        self.timer = metrics.store_writes
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgekeys-writer")

    async def run(self, write: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Make a change to the store (timed: edgekeys_store_write_seconds), then
        bring the projections up to date."""
        change = functools.partial(write, *args, **kwargs)
        return await self._then_project(functools.partial(self._timed, change))

    async def catch_up(self, first: Callable[[], object] = lambda: None) -> None:
        """Bring the projections up to date (after `first`) on the writers' thread."""
        await self._then_project(first)

    async def _then_project(self, call: Callable[[], T]) -> T:
        # In the caller's context: the lines logged on the writer's thread name its method.
        on_thread = functools.partial(contextvars.copy_context().run, self._project_after, call)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, on_thread)
        finally:
            self.on_projected()

    def _timed(self, change: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return change()
        finally:
            self.timer.observe(time.perf_counter() - started)

    def _project_after(self, call: Callable[[], T]) -> T:
        try:
            return call()
        finally:
            try:
                self.projector.catch_up()
            except Exception:  # the write is committed; the poller catches up later
                log.exception("projection after a write failed")

    def close(self) -> None:
        self._thread.shutdown(wait=True)
