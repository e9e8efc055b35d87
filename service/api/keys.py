"""ApiKeyService: management of keys, for portals, provisioning jobs and the CLI."""

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc
from projections.catalog import Catalog
from service.api import fields
from service.api.errors import InvalidArgument
from service.api.messages import api_key_message, from_micros, micros
from service.domain import keyformat
from service.domain.api_key import ApiKey
from service.domain.errors import KeyNotFound, StaleEtag
from service.domain.names import KeyName, key_project
from service.security.callers import authorize, current
from service.write.idempotency import Request
from service.write.keystore import KeyStore
from service.write.last_use import LastUse
from service.write.writer import Writer

UPDATABLE = frozenset({"display_name", "description", "expire_time"})
ORDERS = frozenset({"", "create_time", "expire_time"})
MAX_INT32 = 2**31 - 1  # total_size's limit


def _request(request: Message) -> Request:
    """What names a mutating request (AIP-155): its method, its request id, and a
    fingerprint of every other field it carries."""
    method = request.DESCRIPTOR.name.removesuffix("Request")
    request_id = fields.request_id(request.request_id)  # type: ignore[attr-defined]
    if not request_id:
        return Request(method=method)
    rest = type(request)()
    rest.CopyFrom(request)
    rest.ClearField("request_id")
    fingerprint = hashlib.sha256(rest.SerializeToString(deterministic=True)).hexdigest()
    return Request(request_id, method, fingerprint)


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
        project = fields.project(request.parent)
        caller = authorize(project)
        spec = request.api_key
        expire_time = (
            fields.timestamp(spec.expire_time, "api_key.expire_time")
            if spec.HasField("expire_time")
            else None
        )
        key, secret = await self.writer.run(
            self.keys.create_key,
            project,
            fields.key_id(request.api_key_id),
            fields.display_name(spec.display_name, "api_key.display_name"),
            fields.description(spec.description, "api_key.description"),
            fields.deployments(spec.deployments, "api_key.deployments", project=project),
            expire_time,
            actor=caller.name,
            request=_request(request),
        )
        return pb.CreateApiKeyResponse(api_key=api_key_message(key), secret=secret)

    async def GetApiKey(
        self, request: pb.GetApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetApiKeyResponse:
        name = fields.key_name(request.name)
        authorize(name.project)
        # From the catalog, which the writer brings up to date before it replies: one
        # indexed row, instead of the key's events replayed.
        found = await asyncio.to_thread(self.catalog.get, str(name))
        if found is None:
            raise KeyNotFound(f"{name} does not exist")
        last_use = self.last_use.latest(found.name, found.last_use_time)
        return pb.GetApiKeyResponse(api_key=api_key_message(found, last_use))

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        project = fields.project(request.parent)
        authorize(project)
        size = fields.page_size(request.page_size)
        if request.deployment:
            fields.deployment(request.deployment, project=project)
        if request.order_by not in ORDERS:
            raise InvalidArgument("order_by", f"one of {', '.join(sorted(ORDERS))}")
        by_expiry = request.order_by == "expire_time"
        expire_before = (
            fields.timestamp(request.expire_before, "expire_before")
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
        after, at = fields.decode_page_cursor(request.page_token, query)
        skip = fields.skip(request.skip)
        filters: dict[str, Any] = {
            "deployment": request.deployment,
            "show_deleted": request.show_deleted,
            "expire_before": expire_before,
            "by_expiry": by_expiry,
        }
        after_expiry = None if at is None else from_micros(at)
        records, total = await asyncio.to_thread(
            lambda: (
                self.catalog.list(
                    project,
                    after=after,
                    limit=size + 1,
                    skip=skip,
                    after_expiry=after_expiry,
                    **filters,
                ),
                self.catalog.count(project, **filters),
            )
        )
        page = records[:size]
        token = ""
        if len(records) > size:
            last = page[-1]
            at = micros(last.expire_time) if by_expiry and last.expire_time else None
            token = fields.encode_page_token(last.position, query, at)
        return pb.ListApiKeysResponse(
            api_keys=[
                api_key_message(r, self.last_use.latest(r.name, r.last_use_time)) for r in page
            ],
            next_page_token=token,
            total_size=min(total, MAX_INT32),
        )

    async def UpdateApiKey(
        self, request: pb.UpdateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateApiKeyResponse:
        spec = request.api_key
        name = fields.key_name(spec.name, "api_key.name")
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
            changes["display_name"] = fields.display_name(spec.display_name, "api_key.display_name")
        if "description" in paths:
            changes["description"] = fields.description(spec.description, "api_key.description")
        if "expire_time" in paths:
            changes["expire_time"] = (
                fields.timestamp(spec.expire_time, "api_key.expire_time")
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
        key = await self._change(request, self.keys.attach_deployment, self._deployment(request))
        return pb.AttachDeploymentResponse(api_key=key)

    async def DetachDeployment(
        self, request: pb.DetachDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetachDeploymentResponse:
        key = await self._change(request, self.keys.detach_deployment, self._deployment(request))
        return pb.DetachDeploymentResponse(api_key=key)

    async def DeleteApiKey(
        self, request: pb.DeleteApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteApiKeyResponse:
        return pb.DeleteApiKeyResponse(api_key=await self._change(request, self.keys.delete_key))

    async def RotateApiKey(
        self, request: pb.RotateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateApiKeyResponse:
        name = fields.key_name(request.name)
        options = _mutation_options(request, name)
        grace = fields.duration(request.grace_period, "grace_period")
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
        return pb.PurgeApiKeyResponse(api_key=await self._change(request, self.keys.purge_key))

    async def _change(
        self, request: Any, command: Callable[..., ApiKey], *values: Callable[[KeyName], object]
    ) -> pb.ApiKey:
        """A change to the key `request.name`, and the key it leaves: the caller must be
        allowed in its project; each of `values` reads one more argument of `command`
        from the request, once the name is known to be good."""
        name = fields.key_name(request.name)
        options = _mutation_options(request, name)
        values_read = (value(name) for value in values)
        return api_key_message(await self.writer.run(command, name, *values_read, **options))

    @staticmethod
    def _deployment(request: Any) -> Callable[[KeyName], str]:
        return lambda name: fields.deployment(request.deployment, project=name.project)
