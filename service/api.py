"""gRPC servicers: turn requests into use-case calls and results into responses."""

import asyncio
import functools
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, validation_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from projections.catalog import Catalog
from service import callers, keyformat, requests
from service.application import KeyStore, etag_of
from service.callers import Caller, authorize, current, key_project
from service.domain import KeyNotFound, StaleEtag
from service.errors import InvalidArgument
from service.idempotency import NO_REQUEST, Request
from service.last_use import LastUse
from service.names import KeyName
from service.validator import Validator
from service.writer import Writer

UPDATABLE = frozenset({"display_name", "description", "expire_time"})
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ORDERS = frozenset({"", "create_time", "expire_time"})
MAX_BATCH = 1000


class KeyView(Protocol):
    """What both the aggregate and a catalog row offer to build an ApiKey message."""

    @property
    def name(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def deployments(self) -> list[str]: ...
    @property
    def expire_time(self) -> datetime | None: ...
    @property
    def created_on(self) -> datetime: ...
    @property
    def modified_on(self) -> datetime: ...
    @property
    def delete_time(self) -> datetime | None: ...
    @property
    def purge_time(self) -> datetime | None: ...
    @property
    def secret_hint(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def previous_secret_until(self) -> datetime | None: ...


def api_key_message(key: KeyView, last_use: datetime | None = None) -> pb.ApiKey:
    message = pb.ApiKey(
        name=key.name,
        display_name=key.display_name,
        description=key.description,
        deployments=key.deployments,
        state=pb.ApiKey.STATE_DELETED if key.delete_time else pb.ApiKey.STATE_ACTIVE,
        create_time=_timestamp(key.created_on),
        update_time=_timestamp(key.modified_on),
        secret_hint=key.secret_hint,
        etag=etag_of(key.version),
    )
    if key.expire_time is not None:
        message.expire_time.CopyFrom(_timestamp(key.expire_time))
    if key.delete_time is not None:
        message.delete_time.CopyFrom(_timestamp(key.delete_time))
    if key.purge_time is not None:
        message.purge_time.CopyFrom(_timestamp(key.purge_time))
    if key.previous_secret_until is not None:
        message.previous_secret_expire_time.CopyFrom(_timestamp(key.previous_secret_until))
    if last_use is not None:
        message.last_use_time.CopyFrom(_timestamp(last_use))
    return message


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _request(request: Message) -> Request:
    """What names a mutating request (AIP-155): its request id, its method, and a
    fingerprint of every other field it carries."""
    request_id = requests.request_id(request.request_id)  # type: ignore[attr-defined]
    if not request_id:
        return NO_REQUEST
    fields = type(request)()
    fields.CopyFrom(request)
    fields.ClearField("request_id")
    fingerprint = hashlib.sha256(fields.SerializeToString(deterministic=True)).hexdigest()
    return Request(request_id, request.DESCRIPTOR.name.removesuffix("Request"), fingerprint)


def _mutation_options(request: Any, name: KeyName) -> dict[str, Any]:
    """What every change to one key takes: its etag, the request, and the caller (who
    must be allowed in the key's project)."""
    return {
        "etag": request.etag,
        "actor": authorize(name.project).name,
        "request": _request(request),
    }


class ApiKeyService(api_keys_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, keys: KeyStore, catalog: Catalog, writer: Writer, last_use: LastUse) -> None:
        self.keys = keys
        self.catalog = catalog
        self.writer = writer
        self.last_use = last_use

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        project = requests.project(request.parent)
        caller = authorize(project)
        spec = request.api_key
        expire_time = (
            requests.timestamp(spec.expire_time, "api_key.expire_time")
            if spec.HasField("expire_time")
            else None
        )
        key, secret = await self.writer.run(
            self.keys.create_key,
            project,
            requests.key_id(request.api_key_id),
            requests.display_name(spec.display_name, "api_key.display_name"),
            requests.description(spec.description, "api_key.description"),
            requests.deployments(spec.deployments, "api_key.deployments", project=project),
            expire_time,
            actor=caller.name,
            request=_request(request),
        )
        return pb.CreateApiKeyResponse(api_key=api_key_message(key), secret=secret)

    async def GetApiKey(
        self, request: pb.GetApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetApiKeyResponse:
        name = requests.key_name(request.name)
        authorize(name.project)
        key, last_use = await asyncio.to_thread(
            lambda: (self.keys.get_key(name), self.last_use.of(str(name)))
        )
        return pb.GetApiKeyResponse(api_key=api_key_message(key, last_use))

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        project = requests.project(request.parent)
        authorize(project)
        size = requests.page_size(request.page_size)
        if request.deployment:
            requests.deployment(request.deployment, project=project)
        if request.order_by not in ORDERS:
            raise InvalidArgument("order_by", f"one of {', '.join(sorted(ORDERS))}")
        by_expiry = request.order_by == "expire_time"
        expire_before = (
            requests.timestamp(request.expire_before, "expire_before")
            if request.HasField("expire_before")
            else None
        )
        query = {
            "parent": request.parent,
            "deployment": request.deployment,
            "show_deleted": request.show_deleted,
            "expire_before": expire_before.isoformat() if expire_before else "",
            "order_by": request.order_by,
        }
        after, at = requests.decode_page_cursor(request.page_token, query)
        records = await asyncio.to_thread(
            self.catalog.list,
            project,
            after=after,
            limit=size + 1,
            deployment=request.deployment,
            show_deleted=request.show_deleted,
            expire_before=expire_before,
            by_expiry=by_expiry,
            after_expiry=None if at is None else _from_micros(at),
        )
        page = records[:size]
        token = ""
        if len(records) > size:
            last = page[-1]
            at = _micros(last.expire_time) if by_expiry and last.expire_time else None
            token = requests.encode_page_token(last.position, query, at)
        return pb.ListApiKeysResponse(
            api_keys=[
                api_key_message(r, self.last_use.latest(r.name, r.last_use_time)) for r in page
            ],
            next_page_token=token,
        )

    async def UpdateApiKey(
        self, request: pb.UpdateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateApiKeyResponse:
        spec = request.api_key
        name = requests.key_name(spec.name, "api_key.name")
        caller = authorize(name.project)
        paths = set(request.update_mask.paths)
        if unknown := paths - UPDATABLE:
            raise InvalidArgument(
                "update_mask",
                f"cannot update {', '.join(sorted(unknown))}; "
                f"updatable: {', '.join(sorted(UPDATABLE))}",
            )
        if not paths:  # no mask: whatever is set
            paths = {p for p in ("display_name", "description") if getattr(spec, p)}
            if spec.HasField("expire_time"):
                paths.add("expire_time")
        changes: dict[str, Any] = {}
        if "display_name" in paths:
            changes["display_name"] = requests.display_name(
                spec.display_name, "api_key.display_name"
            )
        if "description" in paths:
            changes["description"] = requests.description(spec.description, "api_key.description")
        if "expire_time" in paths:
            changes["expire_time"] = (
                requests.timestamp(spec.expire_time, "api_key.expire_time")
                if spec.HasField("expire_time")
                else None
            )
        try:
            key = await self.writer.run(
                self.keys.update_key,
                name,
                **changes,
                etag=spec.etag,
                actor=caller.name,
                request=_request(request),
            )
        except StaleEtag as error:
            error.field = "api_key.etag"  # where this request carries it
            raise
        return pb.UpdateApiKeyResponse(api_key=api_key_message(key))

    async def AttachDeployment(
        self, request: pb.AttachDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.AttachDeploymentResponse:
        name = requests.key_name(request.name)
        options = _mutation_options(request, name)
        deployment = requests.deployment(request.deployment, project=name.project)
        key = await self.writer.run(self.keys.attach_deployment, name, deployment, **options)
        return pb.AttachDeploymentResponse(api_key=api_key_message(key))

    async def DetachDeployment(
        self, request: pb.DetachDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetachDeploymentResponse:
        name = requests.key_name(request.name)
        options = _mutation_options(request, name)
        deployment = requests.deployment(request.deployment, project=name.project)
        key = await self.writer.run(self.keys.detach_deployment, name, deployment, **options)
        return pb.DetachDeploymentResponse(api_key=api_key_message(key))

    async def DeleteApiKey(
        self, request: pb.DeleteApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteApiKeyResponse:
        name = requests.key_name(request.name)
        key = await self.writer.run(self.keys.delete_key, name, **_mutation_options(request, name))
        return pb.DeleteApiKeyResponse(api_key=api_key_message(key))

    async def RotateApiKey(
        self, request: pb.RotateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateApiKeyResponse:
        name = requests.key_name(request.name)
        options = _mutation_options(request, name)
        grace = requests.duration(request.grace_period, "grace_period")
        key, secret = await self.writer.run(self.keys.rotate_key, name, grace, **options)
        return pb.RotateApiKeyResponse(api_key=api_key_message(key), secret=secret)

    async def LookupApiKey(
        self, request: pb.LookupApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.LookupApiKeyResponse:
        if not keyformat.is_well_formed(request.secret):
            raise InvalidArgument("secret", "is not an edgekeys secret (edk_ and 49 characters)")
        found = await asyncio.to_thread(self.catalog.lookup, keyformat.digest(request.secret))
        # Another project's key is as unknown as no key: the answer says nothing of it.
        if found is None or not current().may_touch(key_project(found.name)):
            raise KeyNotFound("no key of the projects you may touch has this secret")
        last_use = self.last_use.latest(found.name, found.last_use_time)
        return pb.LookupApiKeyResponse(api_key=api_key_message(found, last_use))

    async def PurgeApiKey(
        self, request: pb.PurgeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.PurgeApiKeyResponse:
        name = requests.key_name(request.name)
        key = await self.writer.run(self.keys.purge_key, name, **_mutation_options(request, name))
        return pb.PurgeApiKeyResponse(api_key=api_key_message(key))


class ValidationService(validation_pb2_grpc.ValidationServiceServicer):
    """The gateways' hot path: memory only, no exception raised for a denial."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator

    async def ValidateApiKey(
        self, request: vpb.ValidateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> vpb.ValidateApiKeyResponse:
        requests.deployment(request.deployment)
        scope = callers.scope(request.deployment)
        if stale := self.validator.stale():
            await context.abort_with_status(stale.status())
        return self._validate(request, self.validator.clock(), scope)

    async def ValidateApiKeys(
        self, request: vpb.ValidateApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> vpb.ValidateApiKeysResponse:
        if len(request.requests) > MAX_BATCH:
            raise InvalidArgument("requests", f"at most {MAX_BATCH} items per call")
        for i, item in enumerate(request.requests):
            requests.deployment(item.deployment, f"requests[{i}].deployment")
        scopes = [callers.scope(item.deployment) for item in request.requests]
        if stale := self.validator.stale():
            await context.abort_with_status(stale.status())
        now = self.validator.clock()
        return vpb.ValidateApiKeysResponse(
            responses=[
                self._validate(item, now, scope)
                for item, scope in zip(request.requests, scopes, strict=True)
            ]
        )

    def _validate(
        self, request: vpb.ValidateApiKeyRequest, now: datetime, scope: Caller | None
    ) -> vpb.ValidateApiKeyResponse:
        verdict, entry = self.validator.verdict(
            request.secret, request.deployment, request.client_address, scope, now
        )
        if entry is None:
            return _verdict(verdict, "", None)
        return _verdict(verdict, entry.name, entry.expire_time)


@functools.lru_cache(maxsize=100_000)
def _verdict(
    verdict: vpb.Verdict, key_name: str, expire_time: datetime | None
) -> vpb.ValidateApiKeyResponse:
    """Built once per distinct answer: responses are only ever serialized, never changed."""
    response = vpb.ValidateApiKeyResponse(verdict=verdict, api_key=key_name)
    if expire_time is not None:
        response.expire_time.FromDatetime(expire_time)
    return response
