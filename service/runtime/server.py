"""The one place a server is assembled, for every mode: on an event store (SQLite, or
one of several replicas on PostgreSQL) or following an upstream edgekeys (an edge
follower, `--follow`). `--workers N` runs N of these (service.runtime.commands).

What every mode shares is here: the gRPC server and its interceptor, the callers gate,
health and reflection, the validation index and the services that read it, metrics.
The mode's `source` keeps the index current and adds what only it serves.
"""

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from importlib.metadata import version

import grpc
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgekeys.v1 import api_keys_pb2, audit_pb2, replication_pb2, validation_pb2
from edgekeys.vendor.envoy.service.auth.v3 import external_auth_pb2
from projections.audit_log import AuditLog, Interrupted
from projections.catalog import Catalog
from projections.index import ValidationIndex
from projections.projector import Lag, since
from service.api.audit import AuditService
from service.api.ext_authz import AuthorizationService
from service.api.interceptors import Access, Calls, InFlight
from service.api.keys import ApiKeyService
from service.api.replication import ReplicaStatus, ReplicationService, StoreStatus
from service.api.validation import ValidationService
from service.api.validator import Validator
from service.console import app as console
from service.domain.clock import Clock, utc_now
from service.http import gcore, openapi
from service.http.app import Listener, application
from service.http.gcore import with_gcore_routes
from service.http.transcoding import Transcoder
from service.replication.feed import Feed
from service.replication.follower import Follower
from service.replication.freshness import Freshness
from service.replication.listener import StoreListener
from service.runtime import exposure
from service.runtime.config import OFF, Settings
from service.runtime.metrics import Metrics
from service.storage.database import (
    NOT_READY,
    UNREACHABLE,
    StoreUnavailable,
    Unavailable,
    is_postgres,
    redacted,
)
from service.write.keystore import KeyStore
from service.write.last_use import LastUse
from service.write.writer import Writer

log = logging.getLogger(__name__)
PROBE_INTERVAL = 0.25  # seconds between polls of a store found unreachable
HEALTH_INTERVAL = 0.5  # seconds between an edge follower's checks of its freshness

KEYS = api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"]
AUDIT = audit_pb2.DESCRIPTOR.services_by_name["AuditService"]
VALIDATION = validation_pb2.DESCRIPTOR.services_by_name["ValidationService"]
AUTHORIZATION = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
REPLICATION = replication_pb2.DESCRIPTOR.services_by_name["ReplicationService"]
STORE_SERVICES = (KEYS.full_name, AUDIT.full_name)
ORDER = [s.full_name for s in (KEYS, VALIDATION, AUDIT, AUTHORIZATION, REPLICATION)]


class Server:
    def __init__(
        self,
        settings: Settings,
        clock: Clock = utc_now,
        upstream_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stopping = threading.Event()  # set by stop(): long work gives up
        self.metrics = Metrics()
        self.index = ValidationIndex()
        self.index_feed = Feed()  # wakes edge followers' streams (ReplicationService)
        self.health = health.aio.HealthServicer()
        self.gate = exposure.gate(settings)
        self.inflight = InFlight()
        self.services: list[str] = []  # served, by full name, for health and reflection
        # Several workers share one port on purpose; a lone server must not share it
        # with a forgotten process by accident.
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", int(settings.workers > 1))])
        self.calls = Calls(self.server, self.metrics, self.inflight)
        self.source: StoreSource | UpstreamSource = (
            UpstreamSource(self, upstream_credentials)
            if settings.follow
            else StoreSource(self, clock)
        )
        validator = Validator(
            self.index,
            clock,
            self.metrics.verdicts,
            freshness=self.source.freshness,
            failures=exposure.validation_failures(settings),
            uses=self.source.uses,
        )
        gateway = Access("gateway", self.gate)
        self.serve(ValidationService(validator), VALIDATION, gateway, lossy=True)
        self.serve(AuthorizationService(validator), AUTHORIZATION, gateway)
        replication = ReplicationService(
            self.index, self.index_feed, self.source.status, self.source.live
        )
        self.serve(replication, REPLICATION, Access("follower", self.gate))
        self.source.serve()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.services.sort(key=ORDER.index)
        reflection.enable_server_reflection(
            (*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = 0
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self.serving = False  # the overall health: SERVING or not
        self.http: Listener | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def store(self) -> "StoreSource":
        """The store this server is on (a server that is not an edge follower)."""
        assert isinstance(self.source, StoreSource), "an edge follower has no store"
        return self.source

    def serve(
        self, servicer: object, service: ServiceDescriptor, access: Access, **options: bool
    ) -> None:
        """Serve `service` with `servicer`, each call first passing `access` (see
        service.api.interceptors)."""
        self.calls.add(servicer, service, access, **options)
        self.services.append(service.full_name)

    async def start(self) -> int:
        """Serve at once, NOT_SERVING until the source has brought the index up to
        date, then SERVING. Returns the bound port."""
        self.port = exposure.bind(self.server, self.settings)
        if self.settings.metrics_address:
            self.metrics_port = self.metrics.serve(self.settings.metrics_address)
        await self.set_serving(False)
        if self.settings.http_address != OFF:  # before gRPC starts: a port taken stops us
            self.http = Listener(
                self.http_application(),
                self.settings.http_address,
                exposure.tls_context(self.settings),
                self.settings.shutdown_grace,
            )
            self.http_port = await self.http.start(reuse_port=self.settings.workers > 1)
        await self.server.start()
        self._tasks = await self.source.start()
        if self.gate is not None:
            self._tasks.append(asyncio.create_task(exposure.watch(self.gate)))
        log.info(
            "edgekeys %s on %s (%s)",
            "edge follower serving" if self.settings.follow else "serving",
            self.settings.address.rsplit(":", 1)[0] + f":{self.port}",
            self.source.describe(),
        )
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING at once; streams end; requests in flight get `grace` seconds;
        a write already on the writer thread always finishes (it is never cut in two)."""
        self.stopping.set()
        await self.set_serving(False)
        self.index_feed.close()
        for task in self._tasks:
            task.cancel()
        await self.source.stop()
        if self.http is not None:
            await self.http.stop()
        await self.inflight.stop(self.server, grace)
        await self.source.close()
        self.metrics.close()

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    def http_application(self) -> web.Application:
        """What the HTTP listener serves: the same wrapped methods as gRPC, for REST,
        Gcore's routes and the console's pages."""
        transcoder = Transcoder(self.calls.methods.values())
        routes = gcore.ROUTES if gcore.served(self.calls.methods) else ()
        document = openapi.document(transcoder.bindings, routes, version("edgekeys"))
        app = application(transcoder, lambda: self.serving, document)
        console.mount(app, self.calls.methods, self.gate, self.clock, self.settings.workers)
        return with_gcore_routes(app, self.calls.methods)

    async def set_serving(self, serving: bool, services: Iterable[str] = ()) -> None:
        """Health of the whole server (and each service), or of `services` alone."""
        if not services:
            self.serving = serving
        status = health_pb2.HealthCheckResponse
        for service in services or ("", *self.services):
            await self.health.set(service, status.SERVING if serving else status.NOT_SERVING)


class StoreSource:
    """A replica on the event store: the write side, the catalog and the audit log,
    the projections that follow the store, and the services that need it."""

    freshness = None  # a store's index is as fresh as the store: it never goes stale

    def __init__(self, server: Server, clock: Clock) -> None:
        self.server = server
        settings = server.settings
        self.settings = settings
        self.keys = KeyStore(settings.database_url, clock, settings.encryption_key)
        self.catalog = Catalog(self.keys.engine, self.keys.sealer("catalog"))
        self.audit = AuditLog(self.keys.engine, self.keys.events_table, verify_elsewhere=True)
        self.projector = self.keys.projector(server.index, self.catalog, self.audit)
        self.last_use = LastUse(self.catalog, settings.last_use_interval)
        self.uses = self.last_use.pending
        self.feed = Feed()  # wakes WatchEvents' watchers
        self.writer = Writer(
            self.projector,
            self._projected,
            server.metrics.store_writes.observe,
            lambda: self.reachable,
            self._unreachable,
            group=self.keys.batch,
        )
        server.metrics.watch(self._lags, server.index.__len__, lambda: self.reachable)
        self.status = StoreStatus(server.index, self._head, lambda: self.last_sync)
        # Fail-static: while the shared store is unreachable (a write or a poll of it
        # failed, and no poll has succeeded since), what needs it fails fast with
        # UNAVAILABLE and validation goes on answering from memory.
        self.reachable = True
        self.ready = False  # caught up with the store as it was at start
        self.last_sync: datetime | None = None  # when the index last reached the store's head
        self._wake = asyncio.Event()  # set when the store notifies a commit
        self._listener: StoreListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one serving, once started
        self._pending: set[asyncio.Task[None]] = set()

    def live(self) -> bool:
        """Caught up at start, and hearing the store: a replica cut off from it sends
        followers no heartbeats, so their max staleness holds."""
        return self.ready and self.reachable

    def serve(self) -> None:
        gate = self.server.gate
        keys = ApiKeyService(self.keys, self.catalog, self.writer, self.last_use)
        audit = AuditService(self.keys, self.audit, self.feed, self.server.stopping)
        self.server.serve(keys, KEYS, Access("admin", gate, self._refusal), log_calls=True)
        self.server.serve(audit, AUDIT, Access("auditor", gate, self._refusal), log_calls=True)

    def describe(self) -> str:
        return f"store {redacted(self.settings.database_url)}, {len(self.server.index)} live keys"

    async def start(self) -> list[asyncio.Task[None]]:
        """Catch up with the store as it is, finish what a crash left (a purge's
        leftovers), then SERVING; from then on, follow the store."""
        self._loop = asyncio.get_running_loop()
        self._follow_notifications()
        await self._catch_up(first=self.projector.load_index)
        await self.writer.catch_up(lambda: self.keys.finish_purges(self.catalog.purged()))
        self.ready = True
        await self.server.set_serving(True)
        return [
            asyncio.create_task(self._poll()),
            asyncio.create_task(self._verify()),
            asyncio.create_task(self.last_use.run()),
        ]

    async def stop(self) -> None:
        self.feed.close()
        if self._listener:
            await asyncio.to_thread(self._listener.stop)

    async def close(self) -> None:
        await self.last_use.flush()
        self.writer.close()
        self.keys.close()
        await asyncio.to_thread(self.audit.close)
        self.catalog.engine.dispose()

    def poll_now(self) -> None:
        """Catch up with the store now, not at the next poll (on the event loop)."""
        self._wake.set()

    def _refusal(self) -> Unavailable | None:
        """Why calls that need the store are refused now, if they are."""
        if not self.ready:
            return Unavailable(
                NOT_READY, "this replica is still catching up with the store; retry shortly"
            )
        return None if self.reachable else StoreUnavailable()

    def _projected(self) -> None:
        self.feed.advance(self.projector.logged_position)
        self.server.index_feed.advance(self.server.index.position)

    def _head(self) -> int | None:
        """The store's last position; None while it is unreachable (last_sync tells
        since when), rather than wait on it."""
        return self.keys.recorder.max_notification_id() if self.reachable else None

    def _lags(self) -> list[Lag]:
        """The projections' lag behind the store; none while it is unreachable."""
        try:
            head = self._head()
        except Exception as error:  # a scrape must not fail for it
            log.warning("the store's head could not be read for the metrics: %s", error)
            return []
        return [] if head is None else self.projector.lags(head)

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
        if self.reachable:
            self.reachable = False
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._announce_reachable)

    def _announce_reachable(self) -> None:
        task = asyncio.create_task(self._set_reachable(self.reachable, announce=True))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _set_reachable(self, reachable: bool, announce: bool = False) -> None:
        """A write or a poll of the store failed to reach it, or a poll reached it again
        (`announce`: the flag is set already, say so)."""
        if reachable == self.reachable and not announce:
            return
        self.reachable = reachable
        if reachable:
            log.info("the store is reachable again: writes are accepted")
        else:
            log.error(
                "the store is unreachable: writes and reads of the catalog fail with "
                "UNAVAILABLE; validation answers from memory as of position %d",
                self.server.index.position,
            )
            self.poll_now()  # and again, soon
        await self.server.set_serving(reachable, STORE_SERVICES)

    async def _catch_up(self, first: Callable[[], object] = lambda: None) -> None:
        await self.writer.catch_up(first)
        self.last_sync = utc_now()

    async def _verify(self) -> None:
        """Check the audit chain once at start, in the background, from the stored
        checkpoint on (what came before was verified when it was stored; VerifyAuditLog
        with SCOPE_FULL checks everything): a store altered outside edgekeys still
        serves, and the log says where."""
        try:
            result = await asyncio.to_thread(
                self.audit.verify, incremental=True, stop=self.server.stopping
            )
        except Interrupted as interrupted:
            log.info("%s: the server is stopping", interrupted)
            return
        if result.ok:
            log.info(
                "audit log verified: %d events after the checkpoint at position %d",
                result.events_checked,
                result.verified_from,
            )
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
            if not self.reachable:
                interval = min(interval, PROBE_INTERVAL)
            # A timer, not wait_for: an idle poll raises no TimeoutError every interval.
            timer = loop.call_later(interval, self._wake.set)
            await self._wake.wait()
            timer.cancel()
            self._wake.clear()
            try:
                await self._catch_up()
            except UNREACHABLE as error:
                if self.reachable:
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


class UpstreamSource:
    """An edge follower: no database; the index is fed by an upstream's StreamIndex,
    and fails closed once the upstream has been silent for the max staleness.
    ApiKeyService and AuditService are not served here (UNIMPLEMENTED)."""

    uses = None  # edge followers note no last use: they have nowhere to write it

    def __init__(self, server: Server, credentials: grpc.ChannelCredentials | None) -> None:
        self.server = server
        settings = server.settings
        self.settings = settings
        self.freshness = Freshness(settings.follow, settings.max_staleness)
        self.follower = Follower(
            settings.follow, server.index, server.index_feed, self.freshness, credentials
        )
        self.live = self.follower.live
        server.metrics.watch(self._lags, server.index.__len__, lambda: not self.freshness.stale())

    def serve(self) -> None:
        """Nothing more than what every server serves."""

    def describe(self) -> str:
        return f"following {self.settings.follow}, max staleness {self.settings.max_staleness:g} s"

    async def start(self) -> list[asyncio.Task[None]]:
        """NOT_SERVING until the upstream's index has arrived whole."""
        return [asyncio.create_task(self.follower.run()), asyncio.create_task(self._watch())]

    async def stop(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            "follower",
            not self.freshness.stale(),
            self.server.index.position,
            self.follower.upstream_position,
            self.follower.last_sync,
            self.settings.follow,
        )

    def _lags(self) -> list[Lag]:
        """How far the index is behind the upstream, as of its last message."""
        behind = max(0, self.follower.upstream_position - self.server.index.position)
        return [Lag("index", behind, since(self.freshness.last_contact))]

    async def _watch(self) -> None:
        """Health follows freshness: SERVING from the first whole snapshot until the
        upstream has been silent for longer than the max staleness."""
        serving = False
        while True:
            if serving != (fresh := not self.freshness.stale()):
                serving = fresh
                await self.server.set_serving(serving)
                if serving:
                    log.info("serving from an index as of position %d", self.server.index.position)
                else:
                    log.error(
                        "%s: NOT_SERVING, validation answers UNAVAILABLE",
                        self.freshness.explanation(),
                    )
            await asyncio.sleep(HEALTH_INTERVAL)
