"""Edge followers: validation-only replicas with no database, fed by an upstream edgekeys.

Upstream, `ReplicationService.StreamIndex` (service.api.replication) sends the
validation index: a snapshot, then each change as the index applies it, and a heartbeat
every second when idle. A `Follower` applies that stream to a local index, and
reconnects forever, resuming from its last position. Once the upstream has been silent
for longer than the max staleness, the follower fails closed (see
service.replication.freshness): a revoked key must not live on at an edge that was cut
off.
"""

import asyncio
import logging
import time
from datetime import datetime

import grpc

from edgekeys.v1 import replication_pb2 as rpb
from edgekeys.v1 import replication_pb2_grpc
from projections.index import Entry, ValidationIndex
from service.domain.clock import utc_now
from service.replication import stream
from service.replication.feed import Feed
from service.replication.freshness import Freshness

log = logging.getLogger(__name__)

SILENCE = 5 * stream.HEARTBEAT  # a stream this quiet is dead, whatever TCP says: reconnect
# A follower relays heartbeats downstream only while it hears its own upstream: a
# follower cut off from the source must not keep the followers behind it looking fresh.
RELAY_WINDOW = 3 * stream.HEARTBEAT
MIN_BACKOFF, MAX_BACKOFF = 0.1, 2.0


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
            self._staging.extend(
                stream.to_entry(c) for c in message.changes if c.state == stream.ACTIVE
            )
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
                if change.state == stream.DELETED:
                    self.index.remove(change.position, change.api_key)
                else:
                    self.index.put(change.position, stream.to_entry(change))
            self.index.position = message.position
        self.upstream_position = message.position
        self.last_sync = utc_now()
        self.freshness.heard(now, self.whole)
        self._applied += 1
        self.feed.advance(self._applied)
