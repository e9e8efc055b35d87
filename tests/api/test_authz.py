"""Envoy's ext_authz Check, called over gRPC as Envoy calls it."""

import json

import pytest
from google.rpc import code_pb2

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.vendor.envoy.config.core.v3.address_pb2 import Address, SocketAddress
from edgekeys.vendor.envoy.service.auth.v3 import external_auth_pb2_grpc
from edgekeys.vendor.envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from edgekeys.vendor.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from tests.conftest import RunningServer

LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"


def check_request(
    headers: dict[str, str], deployment: str | None = LLAMA, source: str = ""
) -> CheckRequest:
    """What Envoy sends: the request's headers, the route's deployment (None: the route
    names none) and the downstream address (empty: none)."""
    extensions = {"deployment": deployment} if deployment is not None else {}
    peer = AttributeContext.Peer(
        address=Address(socket_address=SocketAddress(address=source, port_value=40000))
    )
    return CheckRequest(
        attributes=AttributeContext(
            source=peer if source else None,
            request=AttributeContext.Request(
                http=AttributeContext.HttpRequest(method="POST", path="/v1/chat", headers=headers)
            ),
            context_extensions=extensions,
        )
    )


def check(
    running: RunningServer, headers: dict[str, str], deployment: str | None = LLAMA
) -> CheckResponse:
    response: CheckResponse = external_auth_pb2_grpc.AuthorizationStub(running.channel).Check(
        check_request(headers, deployment), timeout=10
    )
    return response


def denial(response: CheckResponse) -> tuple[int, int, str]:
    """(gRPC code, HTTP status, reason) of a denied response."""
    assert response.WhichOneof("http_response") == "denied_response"
    body = json.loads(response.denied_response.body)
    return response.status.code, response.denied_response.status.code, body["error"]["reason"]


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": "{secret}"},
        {"X-Api-Key": "{secret}"},
        {"authorization": "Bearer {secret}"},
        {"x-api-key": "{secret}", "authorization": "Bearer notused"},
    ],
    ids=["x-api-key", "mixed-case", "bearer", "x-api-key-beside-bearer"],
)
def test_an_attached_key_is_allowed_and_its_headers_never_go_upstream(
    running: RunningServer, headers: dict[str, str]
) -> None:
    created = running.create()
    secret = created.secret
    response = check(running, {k: v.format(secret=secret) for k, v in headers.items()})
    assert response.status.code == code_pb2.OK
    ok = response.ok_response
    assert set(ok.headers_to_remove) == {"x-api-key", "authorization"}
    assert [(h.header.key, h.header.value) for h in ok.headers] == [
        ("x-edgekeys-api-key", created.api_key.name)
    ]
    assert secret not in str(response)


def test_x_api_key_wins_over_a_bearer_token(running: RunningServer) -> None:
    secret = running.create().secret
    response = check(running, {"x-api-key": "wrong", "authorization": f"Bearer {secret}"})
    assert denial(response) == (code_pb2.UNAUTHENTICATED, 401, "VERDICT_MALFORMED")


def test_denials_are_401_for_the_key_and_403_for_the_deployment(running: RunningServer) -> None:
    live = running.create()
    deleted = running.create()
    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=deleted.api_key.name))
    expiring = running.create(expire_time=running.clock.now.replace(year=2031))
    running.clock.now = running.clock.now.replace(year=2032)
    unknown = live.secret[:-10] + ("A" if live.secret[-10] != "A" else "B") + live.secret[-9:]

    assert denial(check(running, {})) == (code_pb2.UNAUTHENTICATED, 401, "API_KEY_MISSING")
    assert denial(check(running, {"x-api-key": unknown}))[:2] == (code_pb2.UNAUTHENTICATED, 401)
    assert denial(check(running, {"x-api-key": deleted.secret})) == (
        code_pb2.UNAUTHENTICATED,
        401,
        "VERDICT_NOT_FOUND",
    )
    assert denial(check(running, {"x-api-key": expiring.secret})) == (
        code_pb2.UNAUTHENTICATED,
        401,
        "VERDICT_EXPIRED",
    )
    assert denial(check(running, {"x-api-key": live.secret}, deployment=MISTRAL)) == (
        code_pb2.PERMISSION_DENIED,
        403,
        "VERDICT_DEPLOYMENT_NOT_ALLOWED",
    )


def test_a_route_without_a_deployment_denies_everything(running: RunningServer) -> None:
    secret = running.create().secret
    for deployment in (None, "", "llama", "projects/acme/apiKeys/llama"):
        response = check(running, {"x-api-key": secret}, deployment=deployment)
        assert denial(response) == (code_pb2.PERMISSION_DENIED, 403, "ROUTE_HAS_NO_DEPLOYMENT")


def test_a_detached_deployment_is_refused_by_the_very_next_check(running: RunningServer) -> None:
    created = running.create()
    assert check(running, {"x-api-key": created.secret}).status.code == code_pb2.OK
    running.keys.DetachDeployment(
        pb.DetachDeploymentRequest(name=created.api_key.name, deployment=LLAMA)
    )
    assert denial(check(running, {"x-api-key": created.secret}))[1] == 403
