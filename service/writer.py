"""The write path: every write on one thread, then the projections, before the reply."""

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from projections.projector import Projector

T = TypeVar("T")
log = logging.getLogger(__name__)


class Writer:
    """Runs every write on one thread and brings the projections up to date before
    the caller hears back, so a change holds for the very next request."""

    def __init__(self, projector: Projector, on_projected: Callable[[], None]) -> None:
        self.projector = projector
        self.on_projected = on_projected  # called on the event loop after each write
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgekeys-writer")

    async def run(self, write: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(self._write_and_project, write, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call)
        finally:
            self.on_projected()

    def _write_and_project(self, write: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return write(*args, **kwargs)
        finally:
            try:
                self.projector.catch_up()
            except Exception:  # the write is committed; the poller catches up later
                log.exception("projection after a write failed")

    async def catch_up(self) -> None:
        await self.run(lambda: None)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
