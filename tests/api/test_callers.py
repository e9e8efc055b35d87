"""Callers: every RPC the server registers admits only a known caller with the role its
service needs, touches only the projects that caller may, and records the caller as the
actor. The methods come from the server's own reflection, so a new RPC is covered here
without editing this file."""

import argparse
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, audit_pb2_grpc, replication_pb2_grpc, validation_pb2_grpc
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import replication_pb2 as rpb
from edgekeys.v1 import validation_pb2 as vpb
from service.runtime import config, exposure
from service.runtime.commands import main
from service.runtime.config import Settings
from service.security import callers
from tests.calls import Metadata, Target, bearer, outcomes
from tests.conftest import FakeClock, RunningServer
from tests.waiting import eventually

# name → (roles, projects); every scoped caller may touch acme only
CAST = {
    "root": (list(callers.ROLES), ["*"]),
    "portal": (["admin"], ["acme"]),
    "acme-gateway": (["gateway"], ["acme"]),
    "acme-auditor": (["auditor"], ["acme"]),
    "acme-follower": (["follower"], ["acme"]),
}
SCOPED = [name for name in CAST if name != "root"]
LLAMA, OTHER_LLAMA = "projects/acme/deployments/llama", "projects/other/deployments/llama"


@dataclass
class Guarded:
    server: RunningServer
    tokens: dict[str, str]
    callers_file: Path
    other_key: pb.CreateApiKeyResponse
    acme_key: pb.CreateApiKeyResponse

    def metadata(self, caller: str) -> Metadata:
        return bearer(self.tokens[caller])

    @property
    def channel(self) -> grpc.Channel:
        assert self.server.channel is not None
        return self.server.channel

    def outcomes(self, metadata_for: Callable[[str], Metadata]) -> dict[str, list[Message] | str]:
        """Every method, aimed at the other project: its responses, or its status code."""
        other = self.other_key
        target = Target("projects/other", other.api_key.name, other.secret, OTHER_LLAMA)
        return {
            method: outcome if isinstance(outcome, list) else _code(outcome)
            for method, outcome in outcomes(self.channel, target, metadata_for).items()
        }


def _code(error: Exception) -> str:
    assert isinstance(error, grpc.RpcError)
    return str(error.code().name)


def write_callers(path: Path, cast: dict[str, tuple[list[str], list[str]]]) -> dict[str, str]:
    tokens, tables = {}, []
    for name, (roles, projects) in cast.items():
        tokens[name], digest = callers.new_token()
        tables.append(callers.caller_table(name, digest, roles, projects, None))
    path.write_text("\n".join(tables))
    return tokens


@pytest.fixture
def guarded(tmp_path: Path, clock: FakeClock, store: str) -> Iterator[Guarded]:
    callers_file = tmp_path / "callers.toml"
    tokens = write_callers(callers_file, CAST)
    server = RunningServer(
        tmp_path / "edgekeys.db",
        clock,
        database_url=store,
        options={"callers_file": str(callers_file)},
    ).start()
    admin = api_keys_pb2_grpc.ApiKeyServiceStub(server.channel)
    root = [("authorization", f"Bearer {tokens['root']}")]

    def create(parent: str, deployment: str) -> pb.CreateApiKeyResponse:
        request = pb.CreateApiKeyRequest(
            parent=parent,
            api_key_id="victim",
            api_key=pb.ApiKey(display_name="secret plans", deployments=[deployment]),
        )
        response: pb.CreateApiKeyResponse = admin.CreateApiKey(request, metadata=root)
        return response

    other = create("projects/other", OTHER_LLAMA)
    acme = create("projects/acme", LLAMA)
    yield Guarded(server, tokens, callers_file, other, acme)
    server.stop()


def test_every_method_wants_a_token(guarded: Guarded) -> None:
    refused = guarded.outcomes(lambda role: [])
    assert set(refused.values()) == {"UNAUTHENTICATED"}, refused


def test_every_method_refuses_an_unknown_token(guarded: Guarded) -> None:
    wrong = [("authorization", "Bearer " + callers.new_token()[0])]
    refused = guarded.outcomes(lambda role: wrong)
    assert set(refused.values()) == {"UNAUTHENTICATED"}, refused
    not_bearer = [("authorization", f"Basic {guarded.tokens['root']}")]
    refused = guarded.outcomes(lambda role: not_bearer)
    assert set(refused.values()) == {"UNAUTHENTICATED"}, refused


def test_every_method_refuses_a_caller_without_its_role(guarded: Guarded) -> None:
    def lacking(role: str) -> list[tuple[str, str]]:
        caller = next(name for name in SCOPED if role not in CAST[name][0])
        return guarded.metadata(caller)

    refused = guarded.outcomes(lacking)
    assert set(refused.values()) == {"PERMISSION_DENIED"}, refused


def test_no_method_reveals_another_projects_keys(guarded: Guarded) -> None:
    def scoped(role: str) -> list[tuple[str, str]]:
        return guarded.metadata(next(name for name in SCOPED if role in CAST[name][0]))

    other = guarded.other_key
    for method, outcome in guarded.outcomes(scoped).items():
        if isinstance(outcome, str):
            assert outcome in ("PERMISSION_DENIED", "NOT_FOUND"), (method, outcome)
            continue
        # answered: then with nothing of the other project (StreamIndex, GetReplicaStatus)
        shown = " ".join(str(message) for message in outcome)
        assert "projects/other" not in shown, (method, shown)
        assert other.secret not in shown


def test_a_scoped_gateway_is_told_nothing_of_other_projects_keys(guarded: Guarded) -> None:
    validation = validation_pb2_grpc.ValidationServiceStub(guarded.channel)
    gateway = guarded.metadata("acme-gateway")

    def verdict(secret: str) -> vpb.ValidateApiKeyResponse:
        request = vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)
        response: vpb.ValidateApiKeyResponse = validation.ValidateApiKey(request, metadata=gateway)
        return response

    assert verdict(guarded.acme_key.secret).verdict == vpb.VERDICT_ALLOWED
    foreign = verdict(guarded.other_key.secret)
    assert (foreign.verdict, foreign.api_key) == (vpb.VERDICT_NOT_FOUND, "")
    # a caller of every project is told the truth: that key is not for this deployment
    root = validation.ValidateApiKey(
        vpb.ValidateApiKeyRequest(secret=guarded.other_key.secret, deployment=LLAMA),
        metadata=guarded.metadata("root"),
    )
    assert root.verdict == vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED


def test_a_scoped_auditor_sees_its_projects_only(guarded: Guarded) -> None:
    audit = audit_pb2_grpc.AuditServiceStub(guarded.channel)
    auditor = guarded.metadata("acme-auditor")
    events = audit.ListEvents(apb.ListEventsRequest(parent="projects/acme"), metadata=auditor)
    assert [e.api_key for e in events.events] == [guarded.acme_key.api_key.name]
    with pytest.raises(grpc.RpcError) as refused:
        audit.VerifyAuditLog(apb.VerifyAuditLogRequest(), metadata=auditor)  # the whole log
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    own = audit.VerifyAuditLog(apb.VerifyAuditLogRequest(parent="projects/acme"), metadata=auditor)
    assert own.ok and own.events_checked == 1


def test_a_scoped_follower_streams_its_projects_keys_only(guarded: Guarded) -> None:
    stream = replication_pb2_grpc.ReplicationServiceStub(guarded.channel).StreamIndex(
        rpb.StreamIndexRequest(), metadata=guarded.metadata("acme-follower"), timeout=10
    )
    first = next(stream)
    stream.cancel()
    assert first.snapshot_complete
    assert [c.api_key for c in first.changes] == [guarded.acme_key.api_key.name]


def test_the_actor_is_the_authenticated_caller(guarded: Guarded) -> None:
    keys = api_keys_pb2_grpc.ApiKeyServiceStub(guarded.channel)
    portal = [*guarded.metadata("portal"), ("x-actor", "someone-else")]
    name = guarded.acme_key.api_key.name
    keys.AttachDeployment(
        pb.AttachDeploymentRequest(name=name, deployment="projects/acme/deployments/mistral"),
        metadata=portal,
    )
    keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=name, display_name="renamed")),
        metadata=portal,
    )
    keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=name), metadata=portal)
    history = audit_pb2_grpc.AuditServiceStub(guarded.channel).ListApiKeyEvents(
        apb.ListApiKeyEventsRequest(name=name), metadata=guarded.metadata("root")
    )
    assert [(e.event_type, e.actor) for e in history.events] == [
        ("KeyCreated", "root"),
        ("DeploymentAttached", "portal"),
        ("DetailsChanged", "portal"),
        ("KeyDeleted", "portal"),
    ]


def test_callers_added_or_removed_take_effect_without_a_restart(
    guarded: Guarded, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = api_keys_pb2_grpc.ApiKeyServiceStub(guarded.channel)

    def answer(token: str) -> str:
        try:
            keys.ListApiKeys(
                pb.ListApiKeysRequest(parent="projects/acme"),
                metadata=[("authorization", f"Bearer {token}")],
            )
        except grpc.RpcError as error:
            return str(error.code().name)
        return "OK"

    command = ["callers", "add", "ops", "--role", "admin", "--project", "projects/acme"]
    assert main([*command, "--file", str(guarded.callers_file), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "ops"
    eventually(lambda: answer(printed["token"]), "OK")

    portal = guarded.tokens["portal"]
    text = guarded.callers_file.read_text()
    guarded.callers_file.write_text(text + "\n[[caller]]\nname = 'half written")
    gate = guarded.server.server.gate
    assert gate is not None
    eventually(gate.changed_on_disk, False)
    assert answer(portal) == "OK"  # a file that does not parse changes nothing
    digest = hashlib.sha256(portal.encode()).hexdigest()
    guarded.callers_file.write_text(text.replace(digest, "0" * 64))
    eventually(lambda: answer(portal), "UNAUTHENTICATED")
    assert answer(printed["token"]) == "OK"


def test_no_callers_file_is_allowed_only_on_loopback() -> None:
    parser = _serve_parser()
    for exposed in ("0.0.0.0:50051", "[::]:50051", ":50051", "edge.example:50051"):
        with pytest.raises(ValueError, match="refusing to listen"):
            config.from_arguments(parser.parse_args(["--address", exposed]))
        assert config.from_arguments(parser.parse_args(["--address", exposed, "--insecure"]))
        assert config.from_arguments(
            parser.parse_args(["--address", exposed, "--callers-file", "callers.toml"])
        )
    for loopback in ("127.0.0.1:50051", "127.0.0.7:1", "[::1]:50051", "localhost:50051"):
        assert config.from_arguments(parser.parse_args(["--address", loopback]))


def test_each_start_says_who_may_call(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert exposure.gate(Settings(address="127.0.0.1:50051")) is None
        assert "only on loopback" in caplog.text
        caplog.clear()
        assert exposure.gate(Settings(address="0.0.0.0:50051", insecure=True)) is None
        assert "--insecure" in caplog.text and "anyone who can reach it" in caplog.text


def test_a_callers_file_that_does_not_parse_stops_the_start(tmp_path: Path) -> None:
    bad = {
        "[[caller]]\nname = 'x'\nroles = ['admin']\nprojects = ['acme']\n": "token_sha256",
        "[[caller]]\nname = 'x'\ntoken_sha256 = 'abc'\nroles = ['admin']\nprojects = ['a']\n": (
            "64 hex digits"
        ),
        f"[[caller]]\nname = 'x'\ntoken_sha256 = '{'0' * 64}'\nroles = ['root']\n"
        "projects = ['acme']\n": "unknown roles root",
        f"[[caller]]\nname = 'x'\ntoken_sha256 = '{'0' * 64}'\nroles = ['admin']\n"
        "projects = ['ACME']\n": "project IDs",
        "[[caller]\n": "callers.toml",
    }
    path = tmp_path / "callers.toml"
    for text, problem in bad.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=problem):
            callers.Gate(str(path))


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser
