"""Follows a shared PostgreSQL store: LISTEN on the channel the event store NOTIFYs at
every insert, on a connection of its own, supervised.

The library's own subscription thread dies silently when its connection drops
(eventsourcing issue #305); this one reconnects with backoff for as long as the
server runs. Notifications only wake the poller sooner: while this connection is down
the poller still polls every interval, and the store is no less reachable for it (a
killed LISTEN connection says nothing of the others; see StoreSource._poll in
service.runtime.server).
"""

import logging
import os
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

from service.storage.database import CONNECT_TIMEOUT

APPLICATION_NAME = "edgekeys-listener"  # and the pid: its name in pg_stat_activity
WAIT = 0.1  # seconds between checks of `stop` while no notification comes (no I/O)
BACKOFF = (0.05, 2.0)  # first and longest wait before reconnecting
log = logging.getLogger(__name__)


class StoreListener:
    def __init__(
        self,
        conninfo: str,
        channel: str,
        *,
        on_notify: Callable[[], object],
    ) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.on_notify = on_notify  # something was committed: catch up
        self.connected = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgekeys-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(WAIT + CONNECT_TIMEOUT + 1)

    def _run(self) -> None:
        backoff = BACKOFF[0]
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self._set_connected(True)
                    backoff = BACKOFF[0]
                    self.on_notify()  # whatever was committed while not listening
                    while not self._stopping.is_set():
                        if any(True for _ in conn.notifies(timeout=WAIT, stop_after=1)):
                            self.on_notify()
            except psycopg.Error as error:
                if self.connected:
                    log.warning(
                        "lost the store's notifications (%s); polling until reconnected", error
                    )
                self._set_connected(False)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, BACKOFF[1])

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self.conninfo,
            autocommit=True,
            application_name=f"{APPLICATION_NAME} {os.getpid()}",
            connect_timeout=CONNECT_TIMEOUT,
            # A peer that vanishes without closing is noticed in about 5 s.
            keepalives=1,
            keepalives_idle=2,
            keepalives_interval=1,
            keepalives_count=3,
        )

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            if connected:
                log.info("listening for the store's notifications")
