"""Every registered RPC (found through reflection, tests/calls.py), fuzzed: arbitrary
bytes as the request body, and well-formed messages with wrong values built from the
request's descriptor. No crash, no INTERNAL or UNKNOWN, no hang: only the README's
documented codes, each error with a google.rpc.Status carrying ErrorInfo (domain
edgekeys)."""

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import given
from hypothesis import strategies as st

from edgekeys.v1 import api_keys_pb2 as pb
from service.api.errors import DOMAIN
from tests.calls import Target, registered_methods
from tests.conftest import FakeClock, RunningServer
from tests.fuzz.conftest import scaled

FUZZ = scaled(20)
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
STREAM_SECONDS = 0.3  # a stream still open then is a watch waiting for events: fine
UNARY_SECONDS = 10  # a unary call this slow is a hang
KEY = "projects/acme/apiKeys/key-a"
# Strings that reach past the field checks into the handlers.
NAMES = [
    "projects/acme",
    KEY,
    "projects/acme/deployments/llama",
    "projects/zeta/deployments/llama",
    "projects/acme/apiKeys/key-b",
    "display_name",
    "expire_time",
    "6f1c1b1e-4f3a-4d7e-9c1a-2b3c4d5e6f70",
    "1",
]
_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    database = tmp_path_factory.mktemp("fuzz") / "edgekeys.db"
    running = RunningServer(database=Path(database), clock=FakeClock()).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def target(server: RunningServer) -> Target:
    """A key the fuzzed names point at, and valid requests aimed at it."""
    created = server.keys.CreateApiKey(
        pb.CreateApiKeyRequest(
            parent="projects/acme",
            api_key_id="key-a",
            api_key=pb.ApiKey(display_name="fuzzed", deployments=[NAMES[2]]),
        )
    )
    NAMES.append(created.secret)  # before any strategy samples NAMES
    return Target(NAMES[0], KEY, created.secret, NAMES[2])


@pytest.fixture(scope="module")
def methods(server: RunningServer) -> list[MethodDescriptor]:
    assert server.channel is not None
    return sorted(registered_methods(server.channel), key=lambda m: m.full_name)


def send(server: RunningServer, method: MethodDescriptor, body: bytes) -> None:
    """Send `body` as the request of `method`; fail unless the outcome is documented."""
    assert server.channel is not None
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = server.channel.unary_stream(path)(body, timeout=STREAM_SECONDS)
            for _ in stream:
                pass
        else:
            server.channel.unary_unary(path)(body, timeout=UNARY_SECONDS)
    except grpc.RpcError as error:
        if method.server_streaming and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return
        assert error.code() in DOCUMENTED, (path, error.code(), error.details())
        status = rpc_status.from_call(error)
        assert status is not None, (path, error.code(), error.details())
        infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
        assert infos, (path, status)
        info = error_details_pb2.ErrorInfo()
        infos[0].Unpack(info)
        assert info.domain == DOMAIN and info.reason, (path, info)


@FUZZ
@given(data=st.data(), body=st.binary(max_size=300))
def test_any_bytes_as_a_request_get_a_documented_answer(
    server: RunningServer, methods: list[MethodDescriptor], data: st.DataObject, body: bytes
) -> None:
    send(server, data.draw(st.sampled_from(methods), label="method"), body)


@FUZZ
@given(data=st.data(), merge=st.booleans())
def test_any_message_with_wrong_values_gets_a_documented_answer(
    server: RunningServer,
    methods: list[MethodDescriptor],
    target: Target,
    data: st.DataObject,
    merge: bool,
) -> None:
    """Random values for any fields; with `merge`, over a valid request for the target."""
    method = data.draw(st.sampled_from(methods), label="method")
    request = target.request(method.input_type) if merge else GetMessageClass(method.input_type)()
    request.MergeFrom(data.draw(messages(method.input_type), label="values"))
    send(server, method, request.SerializeToString())


@cache
def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` with any subset of fields set to any value of its type."""
    fields = {
        f.name: _values(f, depth) for f in descriptor.fields if f.message_type is None or depth < 3
    }
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(descriptor, values))


def _values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        return st.dictionaries(_scalar(key), _scalar(value), max_size=3)
    single = messages(field.message_type, depth + 1) if field.message_type else _scalar(field)
    return st.lists(single, max_size=4) if field.is_repeated else single


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    match field.type:
        case FieldDescriptor.TYPE_STRING:
            names = st.sampled_from(NAMES)
            return st.one_of(names, names, names, st.text(max_size=80))  # mostly names
        case FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=80)
        case FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        case FieldDescriptor.TYPE_DOUBLE:
            return st.floats()
        case FieldDescriptor.TYPE_FLOAT:
            return st.floats(width=32)
        case kind:
            low, high = _RANGES[kind]
            return st.integers(low, high) | st.integers(-3, 3).filter(lambda n: low <= n)


def _build(descriptor: Descriptor, values: dict[str, Any]) -> Message:
    message = GetMessageClass(descriptor)()
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name)
        if isinstance(value, dict):
            target.update(value)
        elif field.is_repeated and field.message_type is not None:
            for item in value:
                target.add().CopyFrom(item)
        elif field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message
