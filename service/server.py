"""Assembles the service: event store, projections, gRPC servicers, health, reflection."""

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgekeys.v1 import api_keys_pb2, audit_pb2, replication_pb2, validation_pb2
from edgekeys.vendor.envoy.service.auth.v3 import external_auth_pb2
from projections.audit import AuditLog, Interrupted
from projections.catalog import Catalog
from projections.index import ValidationIndex
from projections.projector import Projector
from service import exposure, rpc
from service.api import ApiKeyService, ValidationService
from service.application import Clock, KeyStore, utc_now
from service.audit import AuditService, Feed
from service.authz import AuthorizationService
from service.config import Settings
from service.database import UNREACHABLE, is_postgres, redacted
from service.errors import NOT_READY, StoreUnavailable
from service.last_use import LastUse
from service.listener import StoreListener
from service.metrics import Lag, Metrics
from service.replication import ReplicationService, StoreStatus
from service.validator import Validator
from service.writer import Writer

log = logging.getLogger(__name__)
PROBE_INTERVAL = 0.25  # seconds between polls of a store found unreachable

STORE_SERVICES = (
    api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)
SERVICES = (
    api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name,
    validation_pb2.DESCRIPTOR.services_by_name["ValidationService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
    replication_pb2.DESCRIPTOR.services_by_name["ReplicationService"].full_name,
)


class EdgeKeysServer:
    def __init__(self, settings: Settings, clock: Clock = utc_now) -> None:
        self.settings = settings
        self.keys = KeyStore(settings.database_url, clock, settings.encryption_key)
        self.catalog = Catalog(self.keys.engine, self.keys.sealer("catalog"))
        self.audit = AuditLog(self.keys.engine, self.keys.events_table)
        self.index = ValidationIndex()
        self.projector = Projector(self.keys, self.index, self.catalog, self.audit)
        self.last_use = LastUse(self.catalog, settings.last_use_interval)
        self.feed = Feed()
        self.metrics = Metrics()
        self.metrics.watch(self._lags, self.index.__len__, self._reachable)
        self.stopping = threading.Event()  # set by stop(): long work gives up
        self.index_feed = Feed()  # wakes edge followers' streams (ReplicationService)
        self.writer = Writer(
            self.projector, self._projected, self.metrics, self._reachable, self._unreachable
        )
        self.health = health.aio.HealthServicer()
        # Several workers share one port on purpose; a lone server must not share it
        # with a forgotten process by accident.
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", int(settings.workers > 1))])
        # Fail-static: while the shared store is unreachable (a write or a poll of it
        # failed, and no poll has succeeded since), what needs it fails fast with
        # UNAVAILABLE and validation goes on answering from memory.
        self.store_reachable = True
        self.ready = False  # caught up with the store as it was at start
        self.gate = exposure.gate(settings)
        self.inflight = rpc.InFlight()
        validator = Validator(
            self.index,
            clock,
            self.metrics,
            failures=exposure.validation_failures(settings),
            uses=self.last_use.pending,
        )
        rpc.register(
            self.server,
            ApiKeyService(self.keys, self.catalog, self.writer, self.last_use),
            api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"],
            rpc.Access("admin", self.gate, self._store_refusal, self.inflight),
            self.metrics,
            log_calls=True,
        )
        rpc.register(
            self.server,
            ValidationService(validator),
            validation_pb2.DESCRIPTOR.services_by_name["ValidationService"],
            rpc.Access("gateway", self.gate, inflight=self.inflight),
            self.metrics,
            lossy=True,
        )
        rpc.register(
            self.server,
            AuditService(self.keys, self.audit, self.feed, self.stopping),
            audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
            rpc.Access("auditor", self.gate, self._store_refusal, self.inflight),
            self.metrics,
            log_calls=True,
        )
        rpc.register(
            self.server,
            AuthorizationService(validator),
            external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"],
            rpc.Access("gateway", self.gate, inflight=self.inflight),
            self.metrics,
        )
        rpc.register(
            self.server,
            ReplicationService(
                self.index,
                self.index_feed,
                StoreStatus(self.index, self._store_head, self._last_sync),
                # Caught up at start, and hearing the store: a replica cut off from it
                # sends followers no heartbeats, so their max staleness holds.
                live=lambda: self.ready and self.store_reachable,
            ),
            replication_pb2.DESCRIPTOR.services_by_name["ReplicationService"],
            rpc.Access("follower", self.gate, inflight=self.inflight),
            self.metrics,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = 0
        self.metrics_port: int | None = None
        self.last_sync: datetime | None = None  # when the index last reached the store's head
        self._wake = asyncio.Event()  # set when the store notifies a commit
        self._listener: StoreListener | None = None
        self._poller: asyncio.Task[None] | None = None
        self._verifier: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._recorder: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the one serving, once started

    async def start(self) -> int:
        """Serve, NOT_SERVING until the projections have caught up with the store as it
        was at start, then SERVING. Returns the bound port."""
        self._loop = asyncio.get_running_loop()
        self.port = exposure.bind(self.server, self.settings)
        if self.settings.metrics_address:
            self.metrics_port = self.metrics.serve(self.settings.metrics_address)
        await self._set_serving(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        self._follow_notifications()
        await self._catch_up(first=self.projector.load_index)
        await self.writer.catch_up(self.projector.destroy_purged)
        self.ready = True
        await self._set_serving(health_pb2.HealthCheckResponse.SERVING)
        self._poller = asyncio.create_task(self._poll())
        self._verifier = asyncio.create_task(self._verify())
        self._recorder = asyncio.create_task(self.last_use.run())
        if self.gate is not None:
            self._watcher = asyncio.create_task(exposure.watch(self.gate))
        log.info(
            "edgekeys serving on %s (store %s, %d live keys)",
            self.settings.address.rsplit(":", 1)[0] + f":{self.port}",
            redacted(self.settings.database_url),
            len(self.index),
        )
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING at once; streams end; requests in flight get `grace` seconds;
        a write already on the writer thread always finishes (it is never cut in two)."""
        self.stopping.set()
        await self._set_serving(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.feed.close()
        self.index_feed.close()
        for task in (self._poller, self._verifier, self._watcher, self._recorder):
            if task:
                task.cancel()
        if self._listener:
            await asyncio.to_thread(self._listener.stop)
        await self.inflight.stop(self.server, grace)
        await self.last_use.flush()
        self.writer.close()
        self.metrics.close()
        self.keys.close()
        self.catalog.engine.dispose()

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def _set_serving(
        self, status: "health_pb2.HealthCheckResponse.ServingStatus", services: Iterable[str] = ()
    ) -> None:
        for service in services or ("", *SERVICES):
            await self.health.set(service, status)

    def _reachable(self) -> bool:
        return self.store_reachable

    def poll_now(self) -> None:
        """Catch up with the store now, not at the next poll (on the event loop)."""
        self._wake.set()

    def _store_refusal(self) -> StoreUnavailable | None:
        """Why calls that need the store are refused now, if they are."""
        if not self.ready:
            return StoreUnavailable(
                NOT_READY, "this replica is still catching up with the store; retry shortly"
            )
        return None if self.store_reachable else StoreUnavailable()

    def _projected(self) -> None:
        self.feed.advance(self.projector.logged_position)
        self.index_feed.advance(self.index.position)

    def _store_head(self) -> int | None:
        """The store's last position; None while it is unreachable (last_sync tells
        since when), rather than wait for the driver's retries to give up."""
        return self.keys.recorder.max_notification_id() if self.store_reachable else None

    def _lags(self) -> list[Lag]:
        """The projections' lag behind the store; none while it is unreachable."""
        try:
            head = self._store_head()
        except Exception as error:  # a scrape must not fail for it
            log.warning("the store's head could not be read for the metrics: %s", error)
            return []
        return [] if head is None else self.projector.lags(head)

    def _last_sync(self) -> datetime | None:
        return self.last_sync

    def _follow_notifications(self) -> None:
        """On PostgreSQL, wake the poller at every commit, whichever replica made it.
        Only a shortcut: without notifications the poller still polls, and whether the
        store is reachable is the data connections' to tell, not the listener's."""
        if not is_postgres(self.settings.database_url):
            return
        loop = asyncio.get_running_loop()
        self._listener = StoreListener(
            self.settings.database_url,
            self.keys.recorder.channel_name,  # type: ignore[attr-defined]
            on_notify=lambda: loop.call_soon_threadsafe(self._wake.set),
        )
        self._listener.start()

    def _unreachable(self, error: BaseException) -> None:
        """A write could not reach the store (called on the writer's thread): refuse
        the writes behind it at once, and say so on the event loop."""
        if self.store_reachable:
            self.store_reachable = False
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._announce_reachable)

    def _announce_reachable(self) -> None:
        task = asyncio.create_task(self._set_reachable(self.store_reachable, announce=True))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _set_reachable(self, reachable: bool, announce: bool = False) -> None:
        """A write or a poll of the store failed to reach it, or a poll reached it again
        (`announce`: the flag is set already, say so)."""
        if reachable == self.store_reachable and not announce:
            return
        self.store_reachable = reachable
        if reachable:
            log.info("the store is reachable again: writes are accepted")
        else:
            log.error(
                "the store is unreachable: writes and reads of the catalog fail with "
                "UNAVAILABLE; validation answers from memory as of position %d",
                self.index.position,
            )
            self.poll_now()  # and again, soon
        status = health_pb2.HealthCheckResponse
        await self._set_serving(status.SERVING if reachable else status.NOT_SERVING, STORE_SERVICES)

    async def _catch_up(self, first: Callable[[], object] = lambda: None) -> None:
        await self.writer.catch_up(first)
        self.last_sync = utc_now()

    async def _verify(self) -> None:
        """Check the audit chain once at start, in the background: a store altered
        outside edgekeys still serves, and the log says where."""
        try:
            result = await asyncio.to_thread(self.audit.verify, stop=self.stopping)
        except Interrupted as interrupted:
            log.info("%s: the server is stopping", interrupted)
            return
        if result.ok:
            log.info("audit log verified: %d events", result.events_checked)
        else:
            log.error("audit log verification failed: %s", result.problem)

    async def _poll(self) -> None:
        """Catch up when the store notifies a commit or, as a safety net, every poll
        interval: changes made by other processes on the same store. Each poll is also
        the probe of the store: one that fails to reach it marks it unreachable, the
        next that succeeds reachable again (polled at least every PROBE_INTERVAL
        meanwhile)."""
        failing = False
        loop = asyncio.get_running_loop()
        while True:
            interval = self.settings.poll_interval
            if not self.store_reachable:
                interval = min(interval, PROBE_INTERVAL)
            # A timer, not wait_for: an idle poll raises no TimeoutError every interval.
            timer = loop.call_later(interval, self._wake.set)
            await self._wake.wait()
            timer.cancel()
            self._wake.clear()
            try:
                await self._catch_up()
            except UNREACHABLE as error:
                if self.store_reachable:
                    log.warning("polling the store failed: %s", error)
                await self._set_reachable(False)
            except Exception:
                if not failing:
                    log.exception("catching up with the store failed; retrying")
                failing = True
            else:
                await self._set_reachable(True)
                if failing:
                    log.info("caught up with the store again")
                failing = False
