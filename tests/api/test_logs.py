"""One log line per management call and per stored event, with who, what, which key,
which request and how it ended; never a secret, even one sent in the wrong field."""

import logging
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from tests.conftest import RunningServer

PROJECT = "projects/acme"
LLAMA = f"{PROJECT}/deployments/llama"


CALLS, CHANGES = logging.getLogger("edgekeys.calls"), logging.getLogger("edgekeys.changes")


def lines(caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> list[dict[str, object]]:
    """The lines of `logger` with the fields they show (the empty ones are left out)."""
    return [
        {
            "message": r.getMessage(),
            **{k: v for k, v in getattr(r, "fields", {}).items() if v not in ("", None)},
        }
        for r in caplog.records
        if r.name == logger.name
    ]


def test_each_management_call_and_each_change_is_one_line(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    request_id = str(uuid.uuid4())
    caplog.set_level(logging.INFO)
    created = running.keys.CreateApiKey(
        pb.CreateApiKeyRequest(
            parent="projects/acme",
            api_key=pb.ApiKey(display_name="logged", deployments=[LLAMA]),
            request_id=request_id,
        )
    )
    name = created.api_key.name
    rotated = running.keys.RotateApiKey(
        pb.RotateApiKeyRequest(name=name, grace_period=Duration(seconds=60))
    )
    with pytest.raises(grpc.RpcError):
        running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=name, etag="999"))
    running.validation.ValidateApiKey(
        vpb.ValidateApiKeyRequest(secret=rotated.secret, deployment=LLAMA)
    )

    calls = lines(caplog, CALLS)
    assert [(c["method"], c["outcome"]) for c in calls] == [
        ("CreateApiKey", "OK"),
        ("RotateApiKey", "OK"),
        ("DeleteApiKey", "ABORTED"),  # the stale etag
    ]  # and nothing for the gateways' hot path
    assert all(c["caller"] == "anonymous" and c["key"] == name for c in calls)
    assert calls[0]["request_id"] == request_id
    assert all(isinstance(c["duration_ms"], float) for c in calls)

    changes = lines(caplog, CHANGES)
    assert [(c["event"], c["key"], c["version"]) for c in changes] == [
        ("KeyCreated", name, 1),
        ("SecretRotated", name, 2),
    ]
    assert changes[0]["request_id"] == request_id
    assert [c["method"] for c in changes] == ["CreateApiKey", "RotateApiKey"]
    assert all(c["caller"] == "anonymous" and c["outcome"] == "stored" for c in changes)
    assert [c["position"] for c in changes] == [1, 2]
    for secret in (created.secret, rotated.secret):
        assert secret not in caplog.text


def test_a_secret_sent_where_a_name_goes_is_not_logged(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = running.create().secret
    caplog.set_level(logging.INFO)
    keys = running.keys
    misplaced: list[tuple[Any, Message]] = [
        (keys.GetApiKey, pb.GetApiKeyRequest(name=secret)),
        (keys.ListApiKeys, pb.ListApiKeysRequest(parent=secret)),
        (keys.DeleteApiKey, pb.DeleteApiKeyRequest(name=f"{PROJECT}/apiKeys/k", request_id=secret)),
    ]
    for method, request in misplaced:
        with pytest.raises(grpc.RpcError) as caught:
            method(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = running.keys.LookupApiKey(pb.LookupApiKeyRequest(secret=secret))
    assert found.api_key.name

    calls = lines(caplog, CALLS)
    assert [c["method"] for c in calls] == [
        "GetApiKey",
        "ListApiKeys",
        "DeleteApiKey",
        "LookupApiKey",
    ]
    assert calls[0]["key"] == calls[1]["parent"] == calls[2]["request_id"] == "(malformed)"
    assert calls[3]["key"] == found.api_key.name
    assert secret not in caplog.text
