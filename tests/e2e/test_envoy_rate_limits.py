"""Through a real Envoy: a client guessing keys gets 401s, then 429, while a client at
another address with a valid key still reaches the model. Envoy tells edgekeys the
downstream address (each curl binds its own loopback address)."""

from pathlib import Path

import grpc

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc
from tests.e2e.conftest import envoy_in_front, http_status

GUESSER, CUSTOMER = "127.0.0.2", "127.0.0.3"
NOT_A_KEY = "edk_" + "0" * 49


def test_a_guessing_client_gets_429_and_another_client_is_unaffected(tmp_path: Path) -> None:
    limits = envoy_in_front(tmp_path, failed_validation_burst="3", failed_validation_rate="0.001")
    with limits as (edgekeys, envoy):
        with grpc.insecure_channel(edgekeys.address) as channel:
            secret = (
                api_keys_pb2_grpc.ApiKeyServiceStub(channel)
                .CreateApiKey(
                    pb.CreateApiKeyRequest(
                        parent="projects/acme",
                        api_key=pb.ApiKey(
                            display_name="k", deployments=["projects/acme/deployments/llama-3"]
                        ),
                    )
                )
                .secret
            )
        url = f"http://127.0.0.1:{envoy.port}/llama-3/v1/models"
        guesses = [http_status(url, NOT_A_KEY, GUESSER) for _ in range(5)]
        assert guesses == [401, 401, 401, 429, 429]
        assert http_status(url, secret, GUESSER) == 429
        assert http_status(url, secret, CUSTOMER) == 200
