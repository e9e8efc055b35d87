"""Customers' own calls, through a real Envoy, to a model behind edgekeys.

Envoy runs deploy/envoy/envoy.yaml; edgekeys is a real `edgekeys serve` process; the
model is a stub that records every header it receives. The product page's two OpenAI
client examples and its curl example run as printed there, placeholders filled in.
"""

import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import openai
import pytest
import typing_extensions

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc
from tests.e2e.conftest import EnvoyProcess, ServeProcess
from tests.e2e.model_stub import ModelStub

LLAMA = "projects/acme/deployments/llama-3"
MISTRAL = "projects/acme/deployments/mistral"

# The product page's examples, verbatim but for the import Example 1 leaves implicit.
EXAMPLE_1 = """
from openai import OpenAI
client = OpenAI(
    base_url="<Inference Endpoint>/v1",
    api_key="notused",
    default_headers={
        "x-api-Key": "<APIKEY>",
    }
)
completion = client.chat.completions.create(
  model="<ModelName>",
  messages=[
    {"role": "user", "content": "Hello!"}
  ]
)
print(completion.choices[0].message)
"""

EXAMPLE_2 = """
from typing import override

from openai import OpenAI

class GcoreCompatibleOpenAI(OpenAI):
    @property
    @override
    def auth_headers(self) -> dict[str, str]:
        api_key = self.api_key
        return {"x-api-Key": api_key}
client = GcoreCompatibleOpenAI(
    base_url="<Inference Endpoint>/v1",
    api_key="<APIKEY>",
)
completion = client.chat.completions.create(
  model="<ModelName>",
  messages=[
    {"role": "user", "content": "Hello!"}
  ]
)
print(completion.choices[0].message)
"""

EXAMPLES = {"example-1": EXAMPLE_1, "example-2": EXAMPLE_2}


@dataclass
class Gateway:
    edgekeys: ServeProcess
    envoy: EnvoyProcess
    model: ModelStub

    def endpoint(self, route: str = "llama-3") -> str:
        return f"http://127.0.0.1:{self.envoy.port}/{route}"

    def keys(self, channel: grpc.Channel) -> api_keys_pb2_grpc.ApiKeyServiceStub:
        return api_keys_pb2_grpc.ApiKeyServiceStub(channel)

    def create(self, *deployments: str, expire_time: datetime | None = None) -> tuple[str, str]:
        """A new key's (name, secret)."""
        with grpc.insecure_channel(self.edgekeys.address) as channel:
            created = self.keys(channel).CreateApiKey(
                pb.CreateApiKeyRequest(
                    parent="projects/acme",
                    api_key=pb.ApiKey(
                        display_name="gateway test",
                        deployments=list(deployments),
                        expire_time=expire_time,
                    ),
                )
            )
        return created.api_key.name, created.secret

    def run_example(self, example: str, secret: str, route: str = "llama-3") -> str:
        """Run a product page example; returns what it printed, or raises openai's error."""
        code = (
            EXAMPLES[example]
            .replace("<Inference Endpoint>", self.endpoint(route))
            .replace("<APIKEY>", secret)
            .replace("<ModelName>", "llama-3")
        )
        printed: list[str] = []
        exec(code, {"print": lambda *args: printed.append(" ".join(map(str, args)))})
        return "\n".join(printed)

    def curl(self, secret: str | None, route: str = "llama-3") -> int:
        """The product page's curl example; returns the HTTP status."""
        command = ["curl", "--silent", "--output", "/dev/null", "--write-out", "%{http_code}"]
        command += ["--location", f"{self.endpoint(route)}/v1/models"]
        if secret is not None:
            command += ["--header", f"x-api-key: {secret}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
        return int(result.stdout)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gateway")
    model = ModelStub()
    edgekeys = ServeProcess(workdir / "edgekeys.db")
    edgekeys.start()
    envoy = EnvoyProcess(workdir, edgekeys.port, model.port)
    envoy.start()
    yield Gateway(edgekeys, envoy, model)
    envoy.stop()
    edgekeys.stop()
    model.close()


@pytest.fixture(autouse=True)
def typing_override(monkeypatch: pytest.MonkeyPatch) -> None:
    # Example 2 imports typing.override, new in Python 3.12.
    if sys.version_info < (3, 12):
        monkeypatch.setattr(typing, "override", typing_extensions.override, raising=False)


def assert_secret_never_reached_the_model(model: ModelStub, secret: str, name: str) -> None:
    headers = model.seen[-1]
    assert all(secret not in value for value in headers.values())
    assert "x-api-key" not in headers and "authorization" not in headers
    assert headers["x-edgekeys-api-key"] == name


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_the_product_page_example_reaches_the_model_with_an_attached_key(
    gateway: Gateway, example: str
) -> None:
    name, secret = gateway.create(LLAMA)
    printed = gateway.run_example(example, secret)
    assert "Hello from the edge" in printed
    assert gateway.model.paths[-1] == "/v1/chat/completions"
    assert_secret_never_reached_the_model(gateway.model, secret, name)


def test_the_product_page_curl_reaches_the_model_with_an_attached_key(gateway: Gateway) -> None:
    name, secret = gateway.create(LLAMA)
    assert gateway.curl(secret) == 200
    assert gateway.model.paths[-1] == "/v1/models"
    assert_secret_never_reached_the_model(gateway.model, secret, name)


def refused_status(gateway: Gateway, example: str, secret: str, route: str = "llama-3") -> int:
    with pytest.raises(openai.APIStatusError) as refused:
        gateway.run_example(example, secret, route)
    return refused.value.status_code


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_the_examples_are_refused_without_a_live_attached_key(
    gateway: Gateway, example: str
) -> None:
    seen_before = len(gateway.model.seen)
    _, live = gateway.create(LLAMA)
    wrong = live[:10] + ("b" if live[10] == "a" else "a") + live[11:]
    deleted_name, deleted = gateway.create(LLAMA)
    with grpc.insecure_channel(gateway.edgekeys.address) as channel:
        gateway.keys(channel).DeleteApiKey(pb.DeleteApiKeyRequest(name=deleted_name))
    expires = datetime.now(UTC) + timedelta(seconds=1)
    _, expired = gateway.create(LLAMA, expire_time=expires)
    _, elsewhere = gateway.create(MISTRAL)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)

    if example == "example-1":  # Example 2's client itself refuses to run without a key
        assert refused_status(gateway, example, "") == 401
    assert refused_status(gateway, example, wrong) == 401
    assert refused_status(gateway, example, deleted) == 401
    assert refused_status(gateway, example, expired) == 401
    assert refused_status(gateway, example, elsewhere) == 403
    assert gateway.run_example(example, elsewhere, route="mistral")
    assert len(gateway.model.seen) == seen_before + 1  # only the last call got through


def test_curl_is_refused_without_a_key_or_with_a_wrong_one(gateway: Gateway) -> None:
    _, live = gateway.create(MISTRAL)
    assert gateway.curl(None) == 401
    assert gateway.curl("edk_not-a-key") == 401
    assert gateway.curl(live) == 403


def test_revocation_holds_for_the_very_next_request_through_envoy(gateway: Gateway) -> None:
    name, secret = gateway.create(LLAMA, MISTRAL)
    assert gateway.curl(secret, "llama-3") == 200
    assert gateway.curl(secret, "mistral") == 200
    with grpc.insecure_channel(gateway.edgekeys.address) as channel:
        keys = gateway.keys(channel)
        keys.DetachDeployment(pb.DetachDeploymentRequest(name=name, deployment=MISTRAL))
        assert gateway.curl(secret, "mistral") == 403
        assert gateway.curl(secret, "llama-3") == 200
        keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=name))
        assert gateway.curl(secret, "llama-3") == 401


def test_the_example_configuration_is_what_runs(gateway: Gateway) -> None:
    # The test runs deploy/envoy/envoy.yaml itself, with only its ports moved.
    example = EnvoyProcess.EXAMPLE.read_text()
    running = Path(gateway.envoy.config).read_text()
    assert [line for line in example.splitlines() if "port_value" not in line] == [
        line for line in running.splitlines() if "port_value" not in line
    ]
