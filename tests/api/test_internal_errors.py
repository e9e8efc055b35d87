"""An unexpected failure is INTERNAL with a bland message; details stay in the log."""

import logging

import grpc
import pytest

from edgekeys.v1 import api_keys_pb2 as pb
from projections.catalog import Catalog
from tests.conftest import RunningServer


def test_an_unexpected_error_is_internal_and_reveals_nothing(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Catalog, name: object) -> None:
        raise RuntimeError("disk on fire at /secret/path")

    monkeypatch.setattr(Catalog, "get", broken)
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as caught:
        running.keys.GetApiKey(pb.GetApiKeyRequest(name="projects/acme/apiKeys/some-key"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "disk on fire" not in (caught.value.details() or "")
    assert "disk on fire" in caplog.text
