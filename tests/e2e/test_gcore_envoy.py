"""A key made with Gcore's SDK, end to end: `edgekeys serve` as a real process, the key
created and deleted by the SDK on Gcore's routes, attached through our REST API, and a
request through a real Envoy (deploy/envoy/envoy.yaml, its deployments moved to a
Gcore project number) reaching the model with that key's secret."""

from collections.abc import Iterator
from dataclasses import dataclass

import gcore
import httpx
import pytest
from gcore import Gcore

from tests.e2e.conftest import EnvoyProcess, ServeProcess, envoy_in_front

PROJECT = 4242
LLAMA = f"projects/{PROJECT}/deployments/llama-3"


@dataclass
class Stack:
    edgekeys: ServeProcess
    envoy: EnvoyProcess

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.edgekeys.http_port}"

    def through_envoy(self, headers: dict[str, str], route: str = "llama-3") -> int:
        url = f"http://127.0.0.1:{self.envoy.port}/{route}/v1/models"
        return httpx.get(url, headers=headers, timeout=30).status_code


def in_gcore_project(config: str) -> str:
    """The example's routes serve project acme; a Gcore project is a number."""
    return config.replace("projects/acme/", f"projects/{PROJECT}/")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("gcore-envoy")
    with envoy_in_front(workdir, configure=in_gcore_project) as (edgekeys, envoy):
        yield Stack(edgekeys, envoy)


def test_a_key_made_with_gcores_sdk_reaches_the_model_through_envoy_once_attached(
    stack: Stack,
) -> None:
    sdk = Gcore(api_key="unused", base_url=stack.rest, cloud_project_id=PROJECT, max_retries=0)
    keys = sdk.cloud.inference.api_keys
    secret = keys.create(name="from-gcore", description="made by Gcore's SDK").secret
    assert stack.through_envoy({"x-api-key": secret}) == 403  # not attached yet

    attached = httpx.post(
        f"{stack.rest}/v1/projects/{PROJECT}/apiKeys/from-gcore:attachDeployment",
        json={"deployment": LLAMA},
        timeout=30,
    )
    assert attached.status_code == 200, attached.text
    assert keys.get("from-gcore").deployment_names == ["llama-3"]

    # both ways Gcore's deployments take a key
    assert stack.through_envoy({"x-api-key": secret}) == 200
    assert stack.through_envoy({"authorization": f"Bearer {secret}"}) == 200
    assert stack.through_envoy({"x-api-key": secret}, route="mistral") == 403

    with pytest.raises(gcore.ConflictError):  # Gcore's rule: attached keys stay
        keys.delete("from-gcore")
    assert stack.through_envoy({"x-api-key": secret}) == 200
    detached = httpx.post(
        f"{stack.rest}/v1/projects/{PROJECT}/apiKeys/from-gcore:detachDeployment",
        json={"deployment": LLAMA},
        timeout=30,
    )
    assert detached.status_code == 200, detached.text
    keys.delete("from-gcore")
    assert stack.through_envoy({"x-api-key": secret}) == 401
