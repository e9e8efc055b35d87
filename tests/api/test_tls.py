"""TLS and mTLS, with certificates made at run time: the API over TLS only, a client
certificate's subject as the caller, and the CLI and edge followers as TLS clients."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, audit_pb2_grpc
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import validation_pb2 as vpb
from service.cli.client import Credentials
from service.runtime.commands import main
from service.security import callers
from tests.api.test_replication import RunningFollower
from tests.certs import Authority, Issued
from tests.conftest import RunningServer
from tests.waiting import eventually

LLAMA = "projects/acme/deployments/llama"
SUBJECT = "CN=portal-backend,O=Acme"  # as gRPC reports it: RFC 2253, most specific first


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path)


def tls_options(authority: Authority, **more: Any) -> dict[str, Any]:
    server = authority.server()
    return {"tls_cert": str(server.cert), "tls_key": str(server.key), **more}


def secure_channel(port: int, authority: Authority, client: Issued | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        authority.cert.read_bytes(),
        client.key.read_bytes() if client else None,
        client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def create(channel: grpc.Channel, parent: str = "projects/acme", **call: Any) -> str:
    response = api_keys_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
        pb.CreateApiKeyRequest(
            parent=parent,
            api_key=pb.ApiKey(display_name="k", deployments=[f"{parent}/deployments/llama"]),
        ),
        timeout=10,
        **call,
    )
    return str(response.api_key.name)


def actors(channel: grpc.Channel, name: str, **call: Any) -> list[str]:
    history = audit_pb2_grpc.AuditServiceStub(channel).ListApiKeyEvents(
        apb.ListApiKeyEventsRequest(name=name), timeout=10, **call
    )
    return [event.actor for event in history.events]


def callers_file(tmp_path: Path, *tables: str) -> str:
    path = tmp_path / "callers.toml"
    path.write_text("\n".join(tables))
    return str(path)


def test_tls_serves_the_api_encrypted_and_refuses_plaintext(
    tmp_path: Path, authority: Authority, serving: Callable[..., RunningServer]
) -> None:
    token, digest = callers.new_token()
    table = callers.caller_table("portal", digest, ["admin", "auditor"], ["acme"], None)
    server = serving(**tls_options(authority, callers_file=callers_file(tmp_path, table)))
    bearer = [("authorization", f"Bearer {token}")]
    with secure_channel(server.server.port, authority) as channel:
        name = create(channel, metadata=bearer)
        assert actors(channel, name, metadata=bearer) == ["portal"]
    plain = grpc.insecure_channel(f"127.0.0.1:{server.server.port}")
    with plain, pytest.raises(grpc.RpcError) as refused:
        create(plain, metadata=bearer)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_certificate_subject_is_the_caller_named_in_the_callers_file(
    tmp_path: Path, authority: Authority, serving: Callable[..., RunningServer]
) -> None:
    table = callers.caller_table("portal-backend", None, ["admin", "auditor"], ["acme"], SUBJECT)
    server = serving(
        **tls_options(
            authority,
            tls_client_ca=str(authority.cert),
            callers_file=callers_file(tmp_path, table),
        )
    )
    port = server.server.port
    with secure_channel(port, authority, authority.client("portal-backend", "Acme")) as channel:
        name = create(channel)
        assert actors(channel, name) == ["portal-backend"]
        with pytest.raises(grpc.RpcError) as elsewhere:
            create(channel, parent="projects/other")
        assert elsewhere.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with secure_channel(port, authority, authority.client("stranger")) as channel:
        with pytest.raises(grpc.RpcError) as unknown:
            create(channel)
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with secure_channel(port, authority) as channel:  # no certificate: no handshake
        with pytest.raises(grpc.RpcError) as anonymous:
            create(channel)
        assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE
    (tmp_path / "elsewhere").mkdir()
    other_ca = Authority(tmp_path / "elsewhere")
    with secure_channel(port, authority, other_ca.client("portal-backend", "Acme")) as channel:
        with pytest.raises(grpc.RpcError) as forged:
            create(channel)
        assert forged.value.code() == grpc.StatusCode.UNAVAILABLE


def test_with_mtls_and_no_callers_file_any_certificate_of_the_ca_is_a_caller(
    authority: Authority, serving: Callable[..., RunningServer]
) -> None:
    server = serving(**tls_options(authority, tls_client_ca=str(authority.cert)))
    with secure_channel(
        server.server.port, authority, authority.client("ops-robot", "Acme")
    ) as channel:
        name = create(channel, parent="projects/other")
        assert actors(channel, name) == ["CN=ops-robot,O=Acme"]


def test_the_cli_reaches_a_tls_server_with_a_token(
    tmp_path: Path,
    authority: Authority,
    serving: Callable[..., RunningServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    token, digest = callers.new_token()
    table = callers.caller_table("auditor", digest, ["auditor"], ["*"], None)
    server = serving(**tls_options(authority, callers_file=callers_file(tmp_path, table)))
    address = f"127.0.0.1:{server.server.port}"
    verify = ["audit", "verify", "--server", address, "--ca-cert", str(authority.cert)]
    assert main([*verify, "--token", token]) == 0
    assert capsys.readouterr().out.startswith("ok: 0 events verified")
    assert main(verify) == 1  # no token
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_an_edge_follower_reaches_a_tls_upstream_with_a_follower_token(
    tmp_path: Path, authority: Authority, serving: Callable[..., RunningServer]
) -> None:
    admin, admin_digest = callers.new_token()
    follower, follower_digest = callers.new_token()
    path = callers_file(
        tmp_path,
        callers.caller_table("portal", admin_digest, ["admin"], ["*"], None),
        callers.caller_table("edge", follower_digest, ["follower"], ["*"], None),
        # the follower's own gateways would be listed in the follower's own file
    )
    upstream = serving(**tls_options(authority, callers_file=path))
    with secure_channel(upstream.server.port, authority) as channel:
        secret = (
            api_keys_pb2_grpc.ApiKeyServiceStub(channel)
            .CreateApiKey(
                pb.CreateApiKeyRequest(
                    parent="projects/acme", api_key=pb.ApiKey(display_name="k", deployments=[LLAMA])
                ),
                metadata=[("authorization", f"Bearer {admin}")],
            )
            .secret
        )
    edge = RunningFollower(
        upstream.server.port, credentials=Credentials(follower, str(authority.cert))
    )
    try:
        eventually(edge.health, health_pb2.HealthCheckResponse.SERVING)
        assert edge.verdict(secret) == vpb.VERDICT_ALLOWED
    finally:
        edge.stop()
