"""A real Envoy as a `gateway` caller of edgekeys: deploy/envoy/envoy.yaml with its
commented `initial_metadata` line filled in with the gateway's token."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc
from service.security import callers
from tests.calls import bearer
from tests.e2e.conftest import EnvoyProcess, ServeProcess, envoy_in_front, http_status
from tests.waiting import eventually

COMMENTED = '# initial_metadata: [{ key: authorization, value: "Bearer ekc_…" }]'


@dataclass
class Guarded:
    edgekeys: ServeProcess
    envoy: EnvoyProcess
    callers_file: Path
    admin: str

    def create(self, project: str) -> str:
        """The secret of a new key of `project` for its llama-3 deployment."""
        deployment = f"projects/{project}/deployments/llama-3"
        with grpc.insecure_channel(self.edgekeys.address) as channel:
            created = api_keys_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
                pb.CreateApiKeyRequest(
                    parent=f"projects/{project}",
                    api_key=pb.ApiKey(display_name="k", deployments=[deployment]),
                ),
                metadata=bearer(self.admin),
            )
        return str(created.secret)

    def status(self, secret: str) -> int:
        return http_status(f"http://127.0.0.1:{self.envoy.port}/llama-3/v1/models", secret)


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Guarded]:
    admin, admin_digest = callers.new_token()
    gateway, gateway_digest = callers.new_token()
    path = tmp_path / "callers.toml"
    path.write_text(
        callers.caller_table("portal", admin_digest, ["admin"], ["*"], None)
        + callers.caller_table("envoy-acme", gateway_digest, ["gateway"], ["acme"], None)
    )

    def with_token(config: str) -> str:
        assert COMMENTED in config
        return config.replace(COMMENTED, COMMENTED[2:].replace("ekc_…", gateway))

    with envoy_in_front(tmp_path, configure=with_token, callers_file=str(path)) as (
        edgekeys,
        envoy,
    ):
        yield Guarded(edgekeys, envoy, path, admin)


def test_envoy_sends_its_gateway_token_and_sees_only_its_projects_keys(
    guarded: Guarded,
) -> None:
    assert guarded.status(guarded.create("acme")) == 200
    # a key of another project, presented at an acme route: unknown, as far as acme knows
    assert guarded.status(guarded.create("other")) == 401


def test_a_gateway_removed_from_the_callers_file_lets_nothing_through(guarded: Guarded) -> None:
    secret = guarded.create("acme")
    assert guarded.status(secret) == 200
    text = guarded.callers_file.read_text()
    kept = text[: text.index("[[caller]]", 1)]  # the admin only
    guarded.callers_file.write_text(kept)
    eventually(lambda: guarded.status(secret), 503)  # Envoy's status_on_error: closed
