"""AuditService: history, revisions, the project log, a live feed, and verification."""

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping

import grpc
from eventsourcing.persistence import Notification

from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from projections.audit_log import AuditLog, Entry, Interrupted, event_type
from service.api import fields
from service.api.errors import InvalidArgument
from service.api.messages import api_key_message
from service.domain.api_key import ApiKey, PersonalData
from service.domain.errors import KeyNotFound
from service.replication.feed import Feed
from service.security.callers import ALL, authorize
from service.storage.database import Unavailable
from service.write.keystore import KeyStore

DEFAULT_PAGE_SIZE = 100
WATCH_BATCH = 500
EVENT_TYPES = frozenset(
    event_type(cls.TOPIC)
    for cls in vars(ApiKey).values()
    if isinstance(cls, type) and issubclass(cls, ApiKey.Event) and cls is not ApiKey.Event
)


class AuditService(audit_pb2_grpc.AuditServiceServicer):
    def __init__(
        self, keys: KeyStore, audit: AuditLog, feed: Feed, stopping: threading.Event
    ) -> None:
        self.keys = keys
        self.audit = audit
        self.feed = feed
        self.stopping = stopping  # the server is stopping: VerifyAuditLog gives up

    async def ListApiKeyEvents(
        self, request: apb.ListApiKeyEventsRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListApiKeyEventsResponse:
        name = fields.key_name(request.name)
        authorize(name.project)
        size = fields.page_size(request.page_size, DEFAULT_PAGE_SIZE)
        query = {"name": request.name}
        after = fields.decode_page_token(request.page_token, query)
        found = await asyncio.to_thread(
            self.audit.entries, key_id=ApiKey.id_for(name), after=after, limit=size + 1
        )
        if not found and not after:
            raise KeyNotFound(f"{name} does not exist")
        events, token = self._page(found, size, query)
        return apb.ListApiKeyEventsResponse(events=events, next_page_token=token)

    async def GetApiKeyRevision(
        self, request: apb.GetApiKeyRevisionRequest, context: grpc.aio.ServicerContext
    ) -> apb.GetApiKeyRevisionResponse:
        name = fields.key_name(request.name)
        authorize(name.project)
        match request.WhichOneof("revision"):
            case "version":
                if request.version < 1:
                    raise InvalidArgument("version", "versions start at 1")
                version = request.version
            case "as_of_time":
                moment = fields.timestamp(request.as_of_time, "as_of_time")
                found = await asyncio.to_thread(self.audit.version_at, ApiKey.id_for(name), moment)
                if found is None:
                    raise KeyNotFound(f"{name} did not exist at {moment.isoformat()}")
                version = found
            case _:
                raise InvalidArgument("revision", "set version or as_of_time")
        key = await asyncio.to_thread(self.keys.get_key, name, version)
        return apb.GetApiKeyRevisionResponse(api_key=api_key_message(key))

    async def ListEvents(
        self, request: apb.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListEventsResponse:
        project = fields.project(request.parent)
        authorize(project)
        size = fields.page_size(request.page_size, DEFAULT_PAGE_SIZE)
        if request.after_position < 0:
            raise InvalidArgument("after_position", "must not be negative")
        if unknown := set(request.event_types) - EVENT_TYPES:
            raise InvalidArgument(
                "event_types",
                f"unknown {', '.join(sorted(unknown))}; known: {', '.join(sorted(EVENT_TYPES))}",
            )
        start_time = (
            fields.timestamp(request.start_time, "start_time")
            if request.HasField("start_time")
            else None
        )
        end_time = (
            fields.timestamp(request.end_time, "end_time") if request.HasField("end_time") else None
        )
        query = {
            "parent": request.parent,
            "after_position": request.after_position,
            "event_types": sorted(request.event_types),
            "start_time": start_time.isoformat() if start_time else "",
            "end_time": end_time.isoformat() if end_time else "",
        }
        after = fields.decode_page_token(request.page_token, query) or request.after_position
        found = await asyncio.to_thread(
            self.audit.entries,
            project=project,
            after=after,
            limit=size + 1,
            event_types=list(request.event_types),
            start_time=start_time,
            end_time=end_time,
        )
        events, token = self._page(found, size, query)
        return apb.ListEventsResponse(events=events, next_page_token=token)

    async def WatchEvents(
        self, request: apb.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[apb.WatchEventsResponse]:
        project = fields.project(request.parent)
        authorize(project)
        if request.after_position < 0:
            raise InvalidArgument("after_position", "must not be negative")
        after = request.after_position
        while True:
            seen = self.feed.position  # before the query: nothing logged later is missed
            found = await asyncio.to_thread(
                self.audit.entries, project=project, after=after, limit=WATCH_BATCH
            )
            for entry, row in found:
                yield apb.WatchEventsResponse(event=self._event(entry, row))
                after = entry.position
            if len(found) < WATCH_BATCH:
                await self.feed.beyond(seen)
            if self.feed.closed:
                return

    async def VerifyAuditLog(
        self, request: apb.VerifyAuditLogRequest, context: grpc.aio.ServicerContext
    ) -> apb.VerifyAuditLogResponse:
        project = fields.project(request.parent) if request.parent else None
        authorize(project or ALL)  # the whole log only for a caller of every project
        checkpoint = None
        if request.HasField("checkpoint"):
            try:
                digest = bytes.fromhex(request.checkpoint.digest)
            except ValueError:
                raise InvalidArgument("checkpoint.digest", "must be 64 hex digits") from None
            if len(digest) != 32 or request.checkpoint.position < 1:
                raise InvalidArgument("checkpoint", "needs a position and a 64-hex-digit digest")
            checkpoint = (request.checkpoint.position, digest)
        try:
            result = await asyncio.to_thread(
                self.audit.verify,
                project=project,
                checkpoint=checkpoint,
                incremental=request.scope
                == apb.VerifyAuditLogRequest.SCOPE_SINCE_STORED_CHECKPOINT,
                stop=self.stopping,
            )
        except Interrupted:
            raise Unavailable(
                "SERVER_STOPPING", "the server is stopping; verify again elsewhere"
            ) from None
        return apb.VerifyAuditLogResponse(
            ok=result.ok,
            first_bad_position=result.first_bad_position,
            events_checked=result.events_checked,
            checkpoint=apb.Checkpoint(position=result.head_position, digest=result.head_link.hex()),
            problem=result.problem,
            verified_from=result.verified_from,
        )

    def _page(
        self, found: list[tuple[Entry, Notification]], size: int, query: Mapping[str, object]
    ) -> tuple[list[apb.AuditEvent], str]:
        """The events of a page (`found` holds one more, if there are more) and the
        token of the next page (empty on the last)."""
        page = found[:size]
        more = len(found) > size
        token = fields.encode_page_token(page[-1][0].position, query) if more else ""
        return [self._event(entry, row) for entry, row in page], token

    def _event(self, entry: Entry, row: Notification) -> apb.AuditEvent:
        event = self.keys.mapper.to_domain_event(row)
        assert isinstance(event, ApiKey.Event)
        message = apb.AuditEvent(
            position=entry.position,
            api_key=entry.api_key,
            version=entry.version,
            event_type=entry.event_type,
            actor=event.actor,
            request_id=event.request_id,
            hash=entry.link.hex(),
        )
        message.occur_time.FromDatetime(event.timestamp)
        erased = False

        def personal(value: PersonalData) -> str:
            nonlocal erased
            erased = erased or value.text is None
            return value.shown

        match event:
            case ApiKey.KeyCreated():
                message.key_created.CopyFrom(
                    apb.KeyCreatedValues(
                        display_name=personal(event.display_name),
                        description=personal(event.description),
                        deployments=event.deployments,
                        secret_hint=event.secret_hint,
                    )
                )
                if event.expire_time is not None:
                    message.key_created.expire_time.FromDatetime(event.expire_time)
            case ApiKey.DetailsChanged():
                message.details_changed.SetInParent()
                if event.display_name is not None:
                    message.details_changed.display_name = personal(event.display_name)
                if event.description is not None:
                    message.details_changed.description = personal(event.description)
            case ApiKey.DeploymentAttached():
                message.deployment_attached.deployment = event.deployment
            case ApiKey.DeploymentDetached():
                message.deployment_detached.deployment = event.deployment
            case ApiKey.ExpiryChanged():
                message.expiry_changed.SetInParent()
                if event.expire_time is not None:
                    message.expiry_changed.expire_time.FromDatetime(event.expire_time)
            case ApiKey.KeyDeleted():
                message.key_deleted.SetInParent()
            case ApiKey.PersonalDataPurged():
                message.personal_data_purged.SetInParent()
            case ApiKey.SecretRotated():
                message.secret_rotated.secret_hint = event.secret_hint
                if event.previous_until is not None:
                    rotated = message.secret_rotated
                    rotated.previous_secret_expire_time.FromDatetime(event.previous_until)
        message.personal_data_erased = erased
        return message
