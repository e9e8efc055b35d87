"""Request bodies that are not valid protobuf never get UNKNOWN or INTERNAL."""

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from edgekeys.v1 import validation_pb2 as vpb
from tests.conftest import RunningServer

DEPLOYMENT = b"projects/acme/deployments/llama"


def field(number: int, value: bytes) -> bytes:
    """One length-delimited protobuf field (values shorter than 128 bytes)."""
    assert len(value) < 128
    return bytes([number << 3 | 2, len(value)]) + value


def call(running: RunningServer, method: str, body: bytes) -> bytes:
    assert running.channel is not None
    send = running.channel.unary_unary(method)
    response: bytes = send(body, timeout=10)
    return response


def rejected_field(running: RunningServer, method: str, body: bytes) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call(running, method, body)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            named: str = bad_request.field_violations[0].field
            return named
    raise AssertionError("no BadRequest detail")


def test_a_secret_that_is_not_utf8_is_malformed(running: RunningServer) -> None:
    body = field(1, b"edk_\xff\xfe\x00junk") + field(2, DEPLOYMENT)
    reply = call(running, "/edgekeys.v1.ValidationService/ValidateApiKey", body)
    assert vpb.ValidateApiKeyResponse.FromString(reply).verdict == vpb.VERDICT_MALFORMED


def test_batched_secrets_that_are_not_utf8_are_malformed(running: RunningServer) -> None:
    good = running.create().secret.encode()
    items = [field(1, good) + field(2, DEPLOYMENT), field(1, b"\xc3\x28") + field(2, DEPLOYMENT)]
    body = b"".join(field(1, item) for item in items)
    reply = call(running, "/edgekeys.v1.ValidationService/ValidateApiKeys", body)
    verdicts = [r.verdict for r in vpb.ValidateApiKeysResponse.FromString(reply).responses]
    assert verdicts == [vpb.VERDICT_ALLOWED, vpb.VERDICT_MALFORMED]


def test_a_deployment_that_is_not_utf8_is_invalid(running: RunningServer) -> None:
    body = field(1, b"edk_x") + field(2, b"projects/acme/deployments/\xff")
    assert rejected_field(running, "/edgekeys.v1.ValidationService/ValidateApiKey", body) == (
        "deployment"
    )


def test_a_nested_management_field_that_is_not_utf8_is_named(running: RunningServer) -> None:
    body = field(1, b"projects/acme") + field(3, field(2, b"bad \xff name"))
    assert rejected_field(running, "/edgekeys.v1.ApiKeyService/CreateApiKey", body) == (
        "api_key.display_name"
    )


@pytest.mark.parametrize(
    "method",
    [
        "/edgekeys.v1.ValidationService/ValidateApiKey",
        "/edgekeys.v1.ApiKeyService/GetApiKey",
        "/edgekeys.v1.ApiKeyService/ListApiKeys",
    ],
)
def test_a_corrupt_body_is_invalid_argument(running: RunningServer, method: str) -> None:
    assert rejected_field(running, method, b"\x0a\x80") == "request"
