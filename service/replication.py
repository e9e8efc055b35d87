"""Edge followers: validation-only replicas with no database, fed by an upstream edgekeys.

Upstream, `ReplicationService.StreamIndex` sends the validation index (digests, never
secrets): a snapshot, then each change as the index applies it, and a heartbeat every
second when idle. A `Follower` applies that stream to a local index, and reconnects
forever, resuming from its last position. `FollowerServer` is `edgekeys serve --follow`:
ValidateApiKey and Envoy's Check from that index, and StreamIndex again so followers can
chain. Once the upstream has been silent for longer than the max staleness, the follower
fails closed: a revoked key must not live on at an edge that was cut off.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgekeys.v1 import replication_pb2 as rpb
from edgekeys.v1 import replication_pb2_grpc, validation_pb2
from edgekeys.vendor.envoy.service.auth.v3 import external_auth_pb2
from projections.index import Change, Entry, ValidationIndex
from service import exposure, rpc
from service.api import ValidationService
from service.application import Clock, utc_now
from service.audit import Feed
from service.authz import AuthorizationService
from service.callers import current, key_project
from service.config import Settings
from service.errors import InvalidArgument, unavailable
from service.freshness import Freshness
from service.metrics import Lag, Metrics, since
from service.validator import Validator

log = logging.getLogger(__name__)

HEARTBEAT = 1.0  # seconds between messages on an idle stream
BATCH = 1000  # changes per message
SILENCE = 5 * HEARTBEAT  # a stream this quiet is dead, whatever TCP says: reconnect
# A follower relays heartbeats downstream only while it hears its own upstream: a
# follower cut off from the source must not keep the followers behind it looking fresh.
RELAY_WINDOW = 3 * HEARTBEAT
MIN_BACKOFF, MAX_BACKOFF = 0.1, 2.0
HEALTH_INTERVAL = 0.5
ACTIVE, DELETED = rpb.IndexChange.STATE_ACTIVE, rpb.IndexChange.STATE_DELETED
FOLLOWER_SERVICES = (
    validation_pb2.DESCRIPTOR.services_by_name["ValidationService"].full_name,
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
    rpb.DESCRIPTOR.services_by_name["ReplicationService"].full_name,
)


@dataclass(frozen=True)
class ReplicaStatus:
    role: str  # "store" or "follower"
    serving: bool
    position: int
    head_position: int
    last_sync: datetime | None
    upstream: str = ""


class StoreStatus:
    """GetReplicaStatus of a replica that reads the event store."""

    def __init__(
        self,
        index: ValidationIndex,
        head: Callable[[], int | None],
        last_sync: Callable[[], datetime | None],
    ) -> None:
        self.index = index
        self.head = head  # the store's last notification id; reads the database
        self.last_sync = last_sync

    async def __call__(self) -> ReplicaStatus:
        position = self.index.position
        try:
            head = await asyncio.to_thread(self.head) or 0
        except Exception:  # the store is unreachable: what the index knows
            head = position
        synced = self.last_sync()
        return ReplicaStatus("store", synced is not None, position, max(head, position), synced)


class ReplicationService(replication_pb2_grpc.ReplicationServiceServicer):
    def __init__(
        self,
        index: ValidationIndex,
        feed: Feed,
        status: Callable[[], Awaitable[ReplicaStatus]],
        live: Callable[[], bool],
    ) -> None:
        self.index = index
        self.feed = feed  # advances whenever the index may have changed
        self.status = status
        self.live = live  # the index is whole and current: worth streaming

    async def StreamIndex(
        self, request: rpb.StreamIndexRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.StreamIndexResponse]:
        if request.after_position < 0:
            raise InvalidArgument("after_position", "must be 0 or more")
        if not self.live():
            await context.abort_with_status(
                unavailable(
                    "REPLICA_NOT_READY",
                    "this replica's index is not current yet (starting, or cut off from its "
                    "own source); retry",
                )
            )
        caller = current()  # a follower limited to some projects gets only their keys
        mine = None if caller.everywhere else caller.may_touch
        position = request.after_position
        seen = self.feed.position
        changes = self.index.changes_after(position) if position else None
        while not self.feed.closed:
            if changes is None:
                position, entries = self.index.snapshot()
                if mine:
                    entries = [e for e in entries if mine(key_project(e.name))]
                for message in _snapshot(position, entries):
                    yield message
            elif changes[1] or self.live():  # a heartbeat only while current
                position, batch = changes
                if mine:
                    batch = [c for c in batch if mine(key_project(c.entry.name))]
                for message in _changes(position, batch):
                    yield message
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.feed.beyond(seen), HEARTBEAT)
            seen = self.feed.position
            changes = self.index.changes_after(position)

    async def GetReplicaStatus(
        self, request: rpb.GetReplicaStatusRequest, context: grpc.aio.ServicerContext
    ) -> rpb.GetReplicaStatusResponse:
        status = await self.status()
        response = rpb.GetReplicaStatusResponse(
            role=status.role,
            serving=status.serving,
            position=status.position,
            head_position=status.head_position,
            lag=max(0, status.head_position - status.position),
            upstream=status.upstream,
        )
        if status.last_sync is not None:
            response.last_sync_time.FromDatetime(status.last_sync)
        return response


def _snapshot(position: int, entries: Sequence[Entry]) -> Iterator[rpb.StreamIndexResponse]:
    """Built one message at a time: the event loop serves requests in between."""
    starts = range(0, len(entries), BATCH) or range(1)
    for start in starts:
        yield rpb.StreamIndexResponse(
            reset=start == 0,
            changes=[_message(Change(position, e, False)) for e in entries[start : start + BATCH]],
            position=position,
            snapshot_complete=start == starts[-1],
        )


def _changes(position: int, changes: Sequence[Change]) -> Iterator[rpb.StreamIndexResponse]:
    if not changes:
        yield rpb.StreamIndexResponse(position=position)
    for start in range(0, len(changes), BATCH):
        batch = changes[start : start + BATCH]
        last = start + BATCH >= len(changes)
        # A follower cut off mid-way resumes after the last change it received:
        # changes come oldest first, so it has every change up to there.
        yield rpb.StreamIndexResponse(
            changes=[_message(change) for change in batch],
            position=position if last else batch[-1].position,
        )


def _message(change: Change) -> rpb.IndexChange:
    entry = change.entry
    if change.deleted:
        return rpb.IndexChange(position=change.position, api_key=entry.name, state=DELETED)
    message = rpb.IndexChange(
        position=change.position,
        api_key=entry.name,
        secret_sha256=entry.digest,
        deployments=sorted(entry.deployments),
        state=ACTIVE,
    )
    if entry.expire_time is not None:
        message.expire_time.FromDatetime(entry.expire_time)
    if entry.previous_until is not None:
        message.previous_secret_sha256 = entry.previous
        message.previous_secret_expire_time.FromDatetime(entry.previous_until)
    return message


def _entry(change: rpb.IndexChange) -> Entry:
    def moment(field: str) -> datetime | None:
        return getattr(change, field).ToDatetime(tzinfo=UTC) if change.HasField(field) else None

    return Entry(
        change.secret_sha256,
        change.api_key,
        frozenset(change.deployments),
        moment("expire_time"),
        change.previous_secret_sha256,
        moment("previous_secret_expire_time"),
    )


class Follower:
    """Keeps `index` in step with an upstream's StreamIndex, reconnecting forever and
    resuming from the index's position."""

    def __init__(
        self,
        upstream: str,
        index: ValidationIndex,
        feed: Feed,
        freshness: Freshness,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.upstream = upstream
        self.credentials = credentials  # TLS and a `follower` token, when upstream asks
        self.index = index
        self.feed = feed
        self.freshness = freshness
        self.whole = False  # a complete snapshot has been applied
        self.upstream_position = 0  # as of the last message
        self.last_sync: datetime | None = None  # wall time of the last message
        self._staging: list[Entry] | None = None  # a snapshot being received
        self._applied = 0  # messages applied: what `feed` counts

    def live(self) -> bool:
        """Whole and hearing from upstream right now (see RELAY_WINDOW)."""
        last = self.freshness.last_contact
        return self.whole and last is not None and time.monotonic() - last < RELAY_WINDOW

    async def run(self) -> None:
        delay = MIN_BACKOFF
        failing = False
        while True:
            try:
                if await self._follow():
                    delay, failing = MIN_BACKOFF, False
            except grpc.aio.AioRpcError as error:
                if not failing:
                    log.warning(
                        "upstream %s: %s (%s); reconnecting",
                        self.upstream,
                        error.code().name,
                        error.details(),
                    )
                failing = True
            except TimeoutError:
                log.warning("upstream %s silent for %g s; reconnecting", self.upstream, SILENCE)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _follow(self) -> bool:
        """One stream, until it ends or fails. Returns whether anything arrived."""
        self._staging = None  # a snapshot cut off mid-way starts over
        after = self.index.position
        channel = (
            grpc.aio.secure_channel(self.upstream, self.credentials)
            if self.credentials
            else grpc.aio.insecure_channel(self.upstream)
        )
        async with channel:
            call = replication_pb2_grpc.ReplicationServiceStub(channel).StreamIndex(
                rpb.StreamIndexRequest(after_position=after)
            )
            received = False
            while True:
                message = await asyncio.wait_for(call.read(), SILENCE)
                if message is grpc.aio.EOF:
                    return received
                if not received and not message.reset:
                    log.info("resumed following %s after position %d", self.upstream, after)
                received = True
                self._apply(message)

    def _apply(self, message: rpb.StreamIndexResponse) -> None:
        now = time.monotonic()
        if message.reset:
            self._staging = []
        if self._staging is not None:
            self._staging.extend(_entry(c) for c in message.changes if c.state == ACTIVE)
            if message.snapshot_complete:
                self.index.reset(message.position, self._staging)
                log.info(
                    "index loaded from %s: %d keys at position %d",
                    self.upstream,
                    len(self._staging),
                    message.position,
                )
                self._staging, self.whole = None, True
        else:
            for change in message.changes:
                if change.state == DELETED:
                    self.index.remove(change.position, change.api_key)
                else:
                    self.index.put(change.position, _entry(change))
            self.index.position = message.position
        self.upstream_position = message.position
        self.last_sync = utc_now()
        self.freshness.heard(now, self.whole)
        self._applied += 1
        self.feed.advance(self._applied)


class FollowerServer:
    """`edgekeys serve --follow HOST:PORT`: same start/stop/wait/port as EdgeKeysServer.
    ApiKeyService and AuditService are not served here (UNIMPLEMENTED)."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock = utc_now,
        upstream_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.settings = settings
        self.index = ValidationIndex()
        self.feed = Feed()
        self.freshness = Freshness(settings.follow, settings.max_staleness)
        self.follower = Follower(
            settings.follow, self.index, self.feed, self.freshness, upstream_credentials
        )
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", int(settings.workers > 1))])
        self.gate = exposure.gate(settings)
        self.inflight = rpc.InFlight()
        self.metrics = Metrics()
        self.metrics.watch(self._lags, self.index.__len__, lambda: not self.freshness.stale())
        validator = Validator(
            self.index, clock, self.metrics, self.freshness, exposure.validation_failures(settings)
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
            AuthorizationService(validator),
            external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"],
            rpc.Access("gateway", self.gate, inflight=self.inflight),
            self.metrics,
        )
        rpc.register(
            self.server,
            ReplicationService(self.index, self.feed, self._status, self.follower.live),
            rpb.DESCRIPTOR.services_by_name["ReplicationService"],
            rpc.Access("follower", self.gate, inflight=self.inflight),
            self.metrics,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*FOLLOWER_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = 0
        self.metrics_port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        """Serve at once, NOT_SERVING until the upstream's index has arrived whole.
        Returns the bound port."""
        self.port = exposure.bind(self.server, self.settings)
        if self.settings.metrics_address:
            self.metrics_port = self.metrics.serve(self.settings.metrics_address)
        await self._set_serving(False)
        await self.server.start()
        self._tasks = [
            asyncio.create_task(self.follower.run()),
            asyncio.create_task(self._watch()),
        ]
        if self.gate is not None:
            self._tasks.append(asyncio.create_task(exposure.watch(self.gate)))
        log.info(
            "edgekeys edge follower serving on %s, following %s (max staleness %g s)",
            self.settings.address.rsplit(":", 1)[0] + f":{self.port}",
            self.settings.follow,
            self.settings.max_staleness,
        )
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        await self._set_serving(False)
        self.feed.close()
        await self.inflight.stop(self.server, grace)
        self.metrics.close()

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    def _lags(self) -> list[Lag]:
        """How far the index is behind the upstream, as of its last message."""
        behind = max(0, self.follower.upstream_position - self.index.position)
        return [Lag("index", behind, since(self.freshness.last_contact))]

    async def _status(self) -> ReplicaStatus:
        return ReplicaStatus(
            "follower",
            not self.freshness.stale(),
            self.index.position,
            self.follower.upstream_position,
            self.follower.last_sync,
            self.settings.follow,
        )

    async def _watch(self) -> None:
        """Health follows freshness: SERVING from the first whole snapshot until the
        upstream has been silent for longer than the max staleness."""
        serving = False
        while True:
            if serving != (fresh := not self.freshness.stale()):
                serving = fresh
                await self._set_serving(serving)
                if serving:
                    log.info("serving from an index as of position %d", self.index.position)
                else:
                    log.error(
                        "%s: NOT_SERVING, validation answers UNAVAILABLE",
                        self.freshness.explanation(),
                    )
            await asyncio.sleep(HEALTH_INTERVAL)

    async def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse
        for service in ("", *FOLLOWER_SERVICES):
            await self.health.set(service, status.SERVING if serving else status.NOT_SERVING)
