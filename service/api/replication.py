"""ReplicationService: what edge followers are fed (StreamIndex), and every replica's
own status (GetReplicaStatus)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import grpc

from edgekeys.v1 import replication_pb2 as rpb
from edgekeys.v1 import replication_pb2_grpc
from projections.index import ValidationIndex
from service.api.errors import InvalidArgument
from service.domain.names import key_project
from service.replication import stream
from service.replication.feed import Feed
from service.security.callers import current
from service.storage.database import NOT_READY, Unavailable


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
            raise Unavailable(
                NOT_READY,
                "this replica's index is not current yet (starting, or cut off from its "
                "own source); retry",
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
                for message in stream.snapshot_messages(position, entries):
                    yield message
            elif changes[1] or self.live():  # a heartbeat only while current
                position, batch = changes
                if mine:
                    batch = [c for c in batch if mine(key_project(c.entry.name))]
                for message in stream.change_messages(position, batch):
                    yield message
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.feed.beyond(seen), stream.HEARTBEAT)
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
