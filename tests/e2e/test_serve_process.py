"""`edgekeys serve` as a real process, started the way the README starts it."""

import json
import re
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, validation_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from tests.e2e.conftest import BIN, LLAMA, ROOT, Node, ServeProcess


def answers(address: str, names: list[str], secrets: list[str]) -> list[object]:
    """Everything a client can observe about the given keys."""
    with grpc.insecure_channel(address) as channel:
        keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
        validation = validation_pb2_grpc.ValidationServiceStub(channel)
        gets = [keys.GetApiKey(pb.GetApiKeyRequest(name=n)).api_key for n in names]
        lists = [
            keys.ListApiKeys(pb.ListApiKeysRequest(parent="projects/acme", show_deleted=s))
            for s in (False, True)
        ]
        for key in [*gets, *(k for listed in lists for k in listed.api_keys)]:
            key.ClearField("last_use_time")  # moves with the validations below
        verdicts = [
            validation.ValidateApiKey(
                vpb.ValidateApiKeyRequest(secret=s, deployment=f"projects/acme/deployments/{d}")
            )
            for s in secrets
            for d in ("llama", "mistral")
        ]
    return [*gets, *lists, *verdicts]


def test_keys_survive_a_restart_of_the_process(served: ServeProcess) -> None:
    with grpc.insecure_channel(served.address) as channel:
        keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
        created = [
            keys.CreateApiKey(
                pb.CreateApiKeyRequest(
                    parent="projects/acme",
                    api_key=pb.ApiKey(
                        display_name=f"key {i}", deployments=["projects/acme/deployments/llama"]
                    ),
                )
            )
            for i in range(3)
        ]
        names = [c.api_key.name for c in created]
        keys.AttachDeployment(
            pb.AttachDeploymentRequest(
                name=names[0], deployment="projects/acme/deployments/mistral"
            )
        )
        keys.UpdateApiKey(
            pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=names[1], display_name="renamed"))
        )
        keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=names[2]))
    secrets = [c.secret for c in created]
    before = answers(served.address, names, secrets)
    verdicts = [v.verdict for v in before if isinstance(v, vpb.ValidateApiKeyResponse)]
    assert verdicts == [
        vpb.VERDICT_ALLOWED,
        vpb.VERDICT_ALLOWED,
        vpb.VERDICT_ALLOWED,
        vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED,
        vpb.VERDICT_NOT_FOUND,
        vpb.VERDICT_NOT_FOUND,
    ]

    assert served.stop() == 0
    served.start()
    assert answers(served.address, names, secrets) == before


DEADLINE_EXCEEDED = 32  # buf curl exits with 8 × the gRPC code (DEADLINE_EXCEEDED is 4)


def readme_buf_curl_commands() -> list[str]:
    """The README's `buf curl` examples, continuation lines joined, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.strip() for line in "\n".join(blocks).replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith(".venv/bin/buf curl")]


def test_the_readme_buf_curl_tour_works_against_the_served_process(served: ServeProcess) -> None:
    commands = readme_buf_curl_commands()
    assert len(commands) >= 12
    secret = ""
    outputs = []
    for command in commands:
        command = command.replace(".venv/bin/buf", str(BIN / "buf"))
        command = command.replace("127.0.0.1:50051", served.address)
        command = command.replace("edk_…", secret)
        result = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=60, check=False
        )
        if "--timeout" in command:  # a stream, ended by its deadline
            assert result.returncode == DEADLINE_EXCEEDED, f"{command}\n{result.stderr}"
            assert "deadline_exceeded" in result.stderr
        else:
            assert result.returncode == 0, f"{command}\n{result.stderr}"
        outputs.append(result.stdout)
        if "/CreateApiKey" in command:
            secret = json.loads(result.stdout)["secret"]
    assert re.fullmatch(r"edk_[0-9A-Za-z]{49}", secret)
    validated = json.loads(outputs[1])
    assert validated["verdict"] == "VERDICT_ALLOWED"
    assert validated["apiKey"] == "projects/acme/apiKeys/portal-prod"
    deleted = json.loads(
        next(o for c, o in zip(commands, outputs, strict=True) if "/DeleteApiKey" in c)
    )
    assert deleted["apiKey"]["state"] == "STATE_DELETED"
    batch = json.loads(
        next(o for c, o in zip(commands, outputs, strict=True) if "/ValidateApiKeys" in c)
    )
    assert [r["verdict"] for r in batch["responses"]] == ["VERDICT_NOT_FOUND", "VERDICT_MALFORMED"]
    listed = next(o for c, o in zip(commands, outputs, strict=True) if "--list-methods" in c)
    assert "edgekeys.v1.ApiKeyService/CreateApiKey" in listed
    assert "edgekeys.v1.AuditService/VerifyAuditLog" in listed
    history = json.loads(
        next(o for c, o in zip(commands, outputs, strict=True) if "/ListApiKeyEvents" in c)
    )
    assert history["events"][0]["eventType"] == "KeyCreated"
    assert history["events"][-1]["eventType"] == "KeyDeleted"
    verified = json.loads(
        next(o for c, o in zip(commands, outputs, strict=True) if "/VerifyAuditLog" in c)
    )
    assert verified["ok"] is True
    status = json.loads(
        next(o for c, o in zip(commands, outputs, strict=True) if "/GetReplicaStatus" in c)
    )
    assert (status["role"], status["serving"], status.get("lag", "0")) == ("store", True, "0")
    watched = next(o for c, o in zip(commands, outputs, strict=True) if "/WatchEvents" in c)
    assert '"eventType": "KeyCreated"' in watched and '"eventType": "KeyDeleted"' in watched
    purged = json.loads(
        next(o for c, o in zip(commands, outputs, strict=True) if "/PurgeApiKey" in c)
    )
    assert purged["apiKey"].get("displayName", "") == ""
    streamed = next(o for c, o in zip(commands, outputs, strict=True) if "/StreamIndex" in c)
    assert '"snapshotComplete": true' in streamed


def readme_curl_commands() -> list[str]:
    """The README's `curl` examples of the REST API ("HTTP and JSON"), in order."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.strip() for line in "\n".join(blocks).replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith("curl -s") and ":8080/v1/" in line]


def test_the_readme_curl_tour_works_against_the_served_process(served: ServeProcess) -> None:
    commands = readme_curl_commands()
    assert len(commands) >= 6
    outputs: list[dict[str, Any]] = []
    secret = ""
    for command in commands:
        command = command.replace("127.0.0.1:8080", f"127.0.0.1:{served.http_port}")
        command = command.replace("edk_…", secret)
        result = subprocess.run(
            command + " -w '\\n%{http_code}'",
            shell=True,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        body, status = result.stdout.rsplit("\n", 1)
        outputs.append({"status": int(status), **json.loads(body)})
        if "apiKeyId=" in command:
            secret = outputs[-1]["secret"]
    created, listed, updated, validated, rotated, history, missing = outputs
    assert created["status"] == 200 and created["apiKey"]["name"].endswith("/ci-runner")
    assert [k["displayName"] for k in listed["apiKeys"]] == ["CI runner"]
    assert updated["apiKey"]["description"] == "nightly jobs"
    assert (validated["verdict"], validated["apiKey"]) == (
        "VERDICT_ALLOWED",
        "projects/acme/apiKeys/ci-runner",
    )
    assert rotated["secret"] not in ("", secret)
    assert [e["eventType"] for e in history["events"]] == [
        "KeyCreated",
        "DetailsChanged",
        "SecretRotated",
    ]
    assert (missing["status"], missing["error"]["status"]) == (404, "NOT_FOUND")


def test_the_default_store_is_created_under_var_of_the_working_directory(tmp_path: Path) -> None:
    process = ServeProcess(tmp_path / "unused.db")
    del process.env["EDGEKEYS_DATABASE_URL"]  # as `make run` on a fresh clone
    process.process = subprocess.Popen([BIN / "edgekeys", "serve"], env=process.env, cwd=tmp_path)
    try:
        process.wait_serving()
        assert (tmp_path / "var" / "edgekeys.db").is_file()
    finally:
        assert process.stop() == 0


def test_json_logs_are_one_object_per_line_with_the_call_and_the_change(tmp_path: Path) -> None:
    log = tmp_path / "edgekeys.log"
    node = Node(ServeProcess(tmp_path / "edgekeys.db", log_format="json"), log=log)
    node.start()
    try:
        request_id = str(uuid.uuid4())
        created = node.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent="projects/acme",
                api_key=pb.ApiKey(display_name="json", deployments=[LLAMA]),
                request_id=request_id,
            )
        )
        http = f"http://127.0.0.1:{node.process.http_port}"
        leaked = f"{http}/v1/{created.api_key.name}?secret={created.secret}"
        with pytest.raises(urllib.error.HTTPError) as refused:  # a secret in a URL, by mistake
            urllib.request.urlopen(leaked, timeout=10)
        assert refused.value.code == 400
    finally:
        assert node.process.stop() == 0
        node.channel.close()
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(e["message"] == f"HTTP on {http}/" for e in entries)  # the start names its URL
    assert {"logger": "edgekeys.http", "method": "GET", "status": 400}.items() <= next(
        e for e in entries if e["logger"] == "edgekeys.http"
    ).items()
    assert {"time", "level", "logger", "message"} <= entries[0].keys()
    name = created.api_key.name
    shared = {"key": name, "request_id": request_id}
    assert {
        "logger": "edgekeys.calls",
        "method": "CreateApiKey",
        "caller": "anonymous",
        "outcome": "OK",
        **shared,
    }.items() <= next(e for e in entries if e["logger"] == "edgekeys.calls").items()
    assert {
        "logger": "edgekeys.changes",
        "event": "KeyCreated",
        "method": "CreateApiKey",
        "caller": "anonymous",
        "outcome": "stored",
        **shared,
    }.items() <= next(e for e in entries if e["logger"] == "edgekeys.changes").items()
    assert created.secret not in log.read_text()
