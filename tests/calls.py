"""Every RPC a server registers, found through its reflection service and called with a
request built from field names alone: so a new RPC is covered by the tests that use
this without editing them."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

ROLE_OF = {  # the role each registered service asks for; a new service must be added
    "edgekeys.v1.ApiKeyService": "admin",
    "edgekeys.v1.ValidationService": "gateway",
    "edgekeys.v1.AuditService": "auditor",
    "edgekeys.v1.ReplicationService": "follower",
    "envoy.service.auth.v3.Authorization": "gateway",
}
OPEN = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
Metadata: TypeAlias = list[tuple[str, str]]
Outcome: TypeAlias = list[Message] | Exception  # the responses, or the grpc.RpcError raised


def bearer(token: str) -> Metadata:
    return [("authorization", f"Bearer {token}")]


@dataclass(frozen=True)
class Target:
    """What the requests aim at: one project, one of its keys and deployments."""

    project: str  # projects/P
    key: str  # its resource name
    secret: str
    deployment: str

    def request(self, descriptor: Descriptor, depth: int = 0) -> Message:
        """A request whose every resource field names the target, found by field name."""
        values = {
            "parent": self.project,
            "name": self.key,
            "deployment": self.deployment,
            "deployments": self.deployment,
            "secret": self.secret,
            "display_name": "renamed",
        }
        maps = {
            "context_extensions": {"deployment": self.deployment},
            "headers": {"x-api-key": self.secret},
        }
        message = GetMessageClass(descriptor)()
        for field in descriptor.fields:
            target = getattr(message, field.name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                target.update(maps.get(field.name, {}))
            elif field.message_type is not None and depth < 6:
                inner = self.request(field.message_type, depth + 1)
                if inner.ByteSize():
                    (target.add() if field.is_repeated else target).CopyFrom(inner)
            elif field.type == FieldDescriptor.TYPE_STRING and field.name in values:
                if field.is_repeated:
                    target.append(values[field.name])
                else:
                    setattr(message, field.name, values[field.name])
        return message


def registered_methods(channel: grpc.Channel) -> list[MethodDescriptor]:
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(database)
    services = set(database.get_services()) - OPEN
    assert services <= set(ROLE_OF), services - set(ROLE_OF)  # say which role it needs
    return [method for name in services for method in pool.FindServiceByName(name).methods]


def call(channel: grpc.Channel, method: MethodDescriptor, request: Message, metadata: Any) -> Any:
    """The responses (a stream is read for a second); raises the RpcError."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    coding = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": GetMessageClass(method.output_type).FromString,
    }
    if not method.server_streaming:
        return [channel.unary_unary(path, **coding)(request, metadata=metadata, timeout=10)]
    received: list[Message] = []
    stream = channel.unary_stream(path, **coding)(request, metadata=metadata, timeout=1)
    try:
        received.extend(stream)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    return received


def outcomes(
    channel: grpc.Channel, target: Target, metadata_for: Callable[[str], Metadata]
) -> dict[str, Outcome]:
    """ "Service/Method" → its outcome, for every registered method, each called with
    `metadata_for(the role its service needs)`."""
    results: dict[str, Outcome] = {}
    for method in registered_methods(channel):
        role = ROLE_OF[method.containing_service.full_name]
        request = target.request(method.input_type)
        key = f"{method.containing_service.name}/{method.name}"
        try:
            results[key] = call(channel, method, request, metadata_for(role))
        except grpc.RpcError as error:
            results[key] = error
    return results
