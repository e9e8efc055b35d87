from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from tests.conftest import RunningServer


def test_created_key_validates_and_survives_restart(running: RunningServer) -> None:
    created = running.create()
    request = vpb.ValidateApiKeyRequest(
        secret=created.secret, deployment="projects/acme/deployments/llama"
    )
    assert running.validation.ValidateApiKey(request).verdict == vpb.VERDICT_ALLOWED
    running.restart()
    assert running.validation.ValidateApiKey(request).verdict == vpb.VERDICT_ALLOWED
    listed = running.keys.ListApiKeys(pb.ListApiKeysRequest(parent="projects/acme"))
    assert [k.name for k in listed.api_keys] == [created.api_key.name]
