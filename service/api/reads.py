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

from projections.catalog import Catalog, KeyRecord, NameReader
from service.storage.database import UNREACHABLE, StoreUnavailable

log = logging.getLogger(__name__)
MAX_BATCH = 500  # names in one statement, well under SQLite's limit of bound values

_Waiting = tuple[str, "asyncio.Future[KeyRecord | None]"]


class Reads:
    """Reads keys by name from the catalog on one thread, batched, with a reader
    (Catalog.reader) opened on that thread and replaced after a failed read."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._unreachable = UNREACHABLE + catalog.unreachable
        self._reader: NameReader | None = None
        self._gathering: list[_Waiting] = []  # this turn of the loop's calls
        self._queue: queue.SimpleQueue[list[_Waiting] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def get(self, name: str) -> KeyRecord | None:
        """The key named `name`, or None; what the read raises, raised here."""
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(loop,), name="edgekeys-reads")
            self._thread.daemon = True  # a read stuck on the database never holds up exit
            self._thread.start()
        found: asyncio.Future[KeyRecord | None] = loop.create_future()
        if not self._gathering:  # the first of this turn of the loop: sent at its end
            loop.call_soon(self._send)
        self._gathering.append((name, found))
        return await found

    def _send(self) -> None:
        """On the event loop: the calls of one turn go to the reader together (grpc
        hands over many requests a turn), one wake-up of its thread at most."""
        batch, self._gathering = self._gathering, []
        self._queue.put(batch)

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
            batch = first
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # closing: answer these first
                    self._queue.put(None)
                    break
                batch += more
            outcome = self._read(batch)
            try:
                loop.call_soon_threadsafe(_answer, batch, outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _read(self, batch: list[_Waiting]) -> dict[str, KeyRecord] | BaseException:
        names = list({name: None for name, _ in batch})
        # A connection kept from before may have died meanwhile (a database restart):
        # one more try on a new one, as a pool's pre-ping would, before UNAVAILABLE.
        for attempt in (1, 2):
            reader = self._reader
            try:
                if reader is None:
                    reader = self._reader = self.catalog.reader()
                found: dict[str, KeyRecord] = {}
                for start in range(0, len(names), MAX_BATCH):
                    found.update(reader.get_many(names[start : start + MAX_BATCH]))
                return found
            except Exception as error:
                if reader is not None:  # a connection that failed once is not trusted
                    self._reader = None
                    _close(reader)
                if not _caused_by(error, self._unreachable):
                    log.exception("a batch of catalog reads failed")
                    return error
                if attempt == 2 or reader is None:  # a new connection failed: it is down
                    # The whole batch fails with it: each call would wait on it again.
                    log.warning("catalog reads could not reach the store: %s", error)
                    return StoreUnavailable()
        raise AssertionError("unreachable")


def _caused_by(error: BaseException | None, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether `error`, or what it was raised from, is one of `kinds`: a pool check-out
    that fails to reconnect raises InvalidatePoolError from the driver's error."""
    while error is not None:
        if isinstance(error, kinds):
            return True
        error = error.__cause__ or error.__context__
    return False


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
