"""GetApiKey's reads of the catalog, on one thread of their own, many per wake-up.

A read hopped to a thread pool one call at a time costs grpc.aio more than the read
itself: a thread woken per call, a loop wake-up per answer, the GIL handed over twice.
Here the calls that arrive while the reader is busy wait in a queue; it takes them all,
reads their rows in one statement, and wakes the event loop once for the lot. Off the
event loop all the same, so a slow database never stalls validations.

Nothing is kept between batches: each one reads the catalog as it is (replicas sharing
PostgreSQL write last uses and changes to it), after every call in it arrived.
"""

import asyncio
import logging
import queue
import threading
from collections.abc import Callable

from projections.catalog import KeyRecord, NameReader
from service.storage.database import UNREACHABLE, StoreUnavailable

log = logging.getLogger(__name__)
MAX_BATCH = 500  # names in one statement, well under SQLite's limit of bound values

_Waiting = tuple[str, "asyncio.Future[KeyRecord | None]"]


class Reads:
    """Reads keys by name on one thread, batched, with a reader that `connect`
    (Catalog.reader) opens on that thread and that a failed read replaces."""

    def __init__(self, connect: Callable[[], NameReader]) -> None:
        self.connect = connect
        self._reader: NameReader | None = None
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def get(self, name: str) -> KeyRecord | None:
        """The key named `name`, or None; what the read raises, raised here."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, args=(asyncio.get_running_loop(),), name="edgekeys-reads"
            )
            self._thread.daemon = True  # a read stuck on the database never holds up exit
            self._thread.start()
        found: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._queue.put((name, found))
        return await found

    def close(self) -> None:
        """Stop the thread once the reads queued before have been answered."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._serve(loop)
        finally:
            if self._reader is not None:
                self._reader.close()

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:  # closing: answer these first
                    self._queue.put(None)
                    break
                batch.append(waiting)
            outcome = self._read(batch)
            try:
                loop.call_soon_threadsafe(_answer, batch, outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _read(self, batch: list[_Waiting]) -> dict[str, KeyRecord] | BaseException:
        reader = self._reader
        try:
            if reader is None:
                reader = self._reader = self.connect()
            return reader.get_many(list({name for name, _ in batch}))
        except Exception as error:
            # A connection that failed once is not trusted again.
            if reader is not None:
                self._reader = None
                _close(reader)
            if isinstance(error, UNREACHABLE) or (
                reader is not None and isinstance(error, reader.unreachable)
            ):
                # The whole batch fails with it: each call would wait on the database again.
                log.warning("catalog reads could not reach the store: %s", error)
                return StoreUnavailable()
            log.exception("a batch of catalog reads failed")
            return error


def _close(reader: NameReader) -> None:
    try:
        reader.close()
    except Exception:  # already broken: nothing more to release
        log.debug("closing a failed catalog reader", exc_info=True)


def _answer(batch: list[_Waiting], outcome: dict[str, KeyRecord] | BaseException) -> None:
    """On the event loop: each waiting call its row, or the batch's error."""
    for name, found in batch:
        if found.done():  # cancelled: the caller went away
            continue
        if isinstance(outcome, StoreUnavailable):
            found.set_exception(StoreUnavailable())  # one each: a raise adds to its traceback
        elif isinstance(outcome, BaseException):
            found.set_exception(outcome)
        else:
            found.set_result(outcome.get(name))
