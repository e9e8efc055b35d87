"""The write path: every write on one thread, then the projections, before the reply."""

import asyncio
import contextvars
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from projections.projector import Projector
from service.domain.errors import StaleEtag
from service.storage.database import UNREACHABLE, StoreUnavailable
from service.write.keystore import BatchRefused, Conflict

T = TypeVar("T")
Outcome = tuple[Any, BaseException | None]  # a write's result, or what it raised
log = logging.getLogger(__name__)
# On a version conflict with another writer (another replica), when no etag pins the
# version: attempts, after a random pause that grows, so that two replicas hammering one
# key stop colliding in step. The pause is taken off the writer's thread: other writes
# go on meanwhile.
MAX_ATTEMPTS = 12
BACKOFF = 0.002  # seconds, doubled at each attempt, at most 0.1


@dataclass
class _Write:
    """A write waiting for the writer's thread, and, once it ran, its outcome."""

    change: Callable[[], Any]
    context: contextvars.Context  # the caller's: lines logged on the thread name its method
    done: asyncio.Future[Any]  # of the caller's event loop: settled there


class Writer:
    """Runs every write on one thread and brings the projections up to date before
    the caller hears back, so a change holds for the very next request.

    Group commit: the writes that queue up while the thread is busy run next as one
    batch (`group`, the store's `KeyStore.batch`: one transaction for all their
    events), then one catch-up of the projections, then every caller hears back. Idle,
    a batch is one write. A write that fails its own checks fails alone; should the
    batch's transaction fail, its writes run again one by one.

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
        group: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self.projector = projector
        self.on_projected = on_projected  # called on the event loop after each write
        self.reachable = reachable
        self.on_unreachable = on_unreachable
        self.observe = observe  # each batch's seconds (edgekeys_store_write_seconds)
        self.group = group
        self._queue: deque[_Write] = deque()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgekeys-writer")

    async def run(self, write: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Make a change to the store (with whatever else is queued: timed as a batch,
        edgekeys_store_write_seconds), then bring the projections up to date. A change
        that lost a race with another writer (Conflict) is queued again after a pause."""
        change = functools.partial(write, *args, **kwargs)
        loop = asyncio.get_running_loop()
        for attempt in range(MAX_ATTEMPTS):
            queued = _Write(change, contextvars.copy_context(), loop.create_future())
            self._queue.append(queued)
            # Some batch takes it, at the latest the one this call starts. The caller
            # hears back when that batch is done, not when this call's own turn on the
            # thread comes (it may come behind later batches).
            self._thread.submit(self._drain)
            try:
                result: T = await queued.done
                return result
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
        on_thread = functools.partial(contextvars.copy_context().run, call)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, on_thread)
        finally:
            self.on_projected()

    def _drain(self) -> None:
        """On the writer's thread: every write queued, as one batch; then the
        projections; then the answers."""
        batch = []
        while self._queue:
            batch.append(self._queue.popleft())
        if not batch:
            return  # an earlier call took this call's write
        started = time.perf_counter()
        outcomes: list[Outcome]
        try:
            outcomes = [self._apply(batch[0])] if len(batch) == 1 else self._together(batch)
        finally:
            self.observe(time.perf_counter() - started)
            if self.reachable():
                self._project()
        try:
            batch[0].done.get_loop().call_soon_threadsafe(self._answer, batch, outcomes)
        except RuntimeError:  # the loop is closed: nobody waits any more
            log.warning("%d writes finished after the server's event loop closed", len(batch))

    def _answer(self, batch: list[_Write], outcomes: list[Outcome]) -> None:
        """On the event loop: what follows each write, then each caller's answer."""
        self.on_projected()
        for write, (result, error) in zip(batch, outcomes, strict=True):
            if write.done.cancelled():
                continue
            if error is None:
                write.done.set_result(result)
            else:
                write.done.set_exception(error)

    def _together(self, batch: list[_Write]) -> list[Outcome]:
        try:
            with self.group():
                return [self._apply(write) for write in batch]
        except UNREACHABLE as error:
            self._unreachable(error)
            return [(None, StoreUnavailable())] * len(batch)
        except BatchRefused as error:  # nothing of the batch was stored
            log.info("a batch of %d writes failed (%s); one by one instead", len(batch), error)
            return [self._apply(write) for write in batch]
        except Exception as error:  # after the commit: stored, or not known; not run again
            log.exception("a batch of %d writes failed", len(batch))
            return [(None, error)] * len(batch)

    def _apply(self, write: _Write) -> Outcome:
        """One write, in its caller's context: its result, or what it raised."""
        if not self.reachable():
            return None, StoreUnavailable()
        try:
            return write.context.run(write.change), None
        except UNREACHABLE as error:
            self._unreachable(error)
            return None, StoreUnavailable()
        except Exception as error:
            return None, error

    def _unreachable(self, error: BaseException) -> None:
        log.warning("a write could not reach the store: %s", error)
        self.on_unreachable(error)

    def _project(self) -> None:
        try:
            self.projector.catch_up()
        except Exception:  # the writes are committed; the poller catches up later
            log.exception("projection after a write failed")

    def close(self) -> None:
        self._thread.shutdown(wait=True)
