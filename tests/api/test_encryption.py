"""Encryption at rest: with EDGEKEYS_ENCRYPTION_KEY, names and descriptions are in no
stored byte (events, catalog, data keys), and the service works the same; an existing
store is brought to it by `edgekeys store copy`."""

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from service.runtime.commands import main
from tests.conftest import RunningServer
from tests.postgres import fresh_database
from tests.stored import stored_bytes

pytestmark = pytest.mark.both_stores

KEY = base64.b64encode(os.urandom(32)).decode()
LLAMA = "projects/acme/deployments/llama"
WORDS = ("Zanzibar Quokka Seven", "bills the Blue Harbour tenants", "Renamed Okapi Nine")


def use(server: RunningServer) -> tuple[dict[str, Any], str]:
    """Create and change a key through the API; what a client then sees, and its secret."""
    created = server.create(display_name=WORDS[0], description=WORDS[1])
    name = created.api_key.name
    server.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=name, display_name=WORDS[2]))
    )
    server.keys.AttachDeployment(
        pb.AttachDeploymentRequest(name=name, deployment="projects/acme/deployments/mistral")
    )
    return seen(server, created.secret), created.secret


def seen(server: RunningServer, secret: str) -> dict[str, Any]:
    listed = server.keys.ListApiKeys(pb.ListApiKeysRequest(parent="projects/acme"))
    name = listed.api_keys[0].name
    audit = audit_pb2_grpc.AuditServiceStub(server.channel)
    history = audit.ListApiKeyEvents(apb.ListApiKeyEventsRequest(name=name))
    verdict = server.validation.ValidateApiKey(
        vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)
    ).verdict
    return {
        "listed": [(k.display_name, k.description, list(k.deployments)) for k in listed.api_keys],
        "events": [(e.event_type, e.WhichOneof("values")) for e in history.events],
        "first_name": history.events[0].key_created.display_name,
        "verdict": verdict,
        "verified": audit.VerifyAuditLog(apb.VerifyAuditLogRequest()).ok,
    }


@pytest.fixture
def fresh_store(store: str, tmp_path: Path) -> Iterator[str]:
    """Another empty store of the same kind as `store`."""
    if store.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'copy' / 'edgekeys.db'}"
        return
    with fresh_database() as url:
        yield url


def words_stored(store: str) -> list[str]:
    stored = stored_bytes(store)
    return [word for word in WORDS if word.encode() in stored]


def test_with_a_key_no_name_or_description_is_stored_readable(
    serving: Callable[..., RunningServer], store: str
) -> None:
    server = serving(encryption_key=KEY)
    before, _ = use(server)
    assert before["listed"] == [(WORDS[2], WORDS[1], [LLAMA, "projects/acme/deployments/mistral"])]
    assert before["first_name"] == WORDS[0]
    assert before["verdict"] == vpb.VERDICT_ALLOWED and before["verified"]
    server.stop()
    assert words_stored(store) == []


def test_without_a_key_the_same_check_finds_the_words(
    serving: Callable[..., RunningServer], store: str
) -> None:
    use(serving())
    # the catalog's current name and description (events hold them sealed per key)
    assert {WORDS[1], WORDS[2]} <= set(words_stored(store))


def test_an_existing_store_is_copied_into_an_encrypted_one_that_serves_the_same(
    serving: Callable[..., RunningServer],
    store: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_store: str,
) -> None:
    plain = serving()
    before, secret = use(plain)
    plain.stop()
    monkeypatch.setenv("EDGEKEYS_ENCRYPTION_KEY", KEY)
    assert main(["store", "copy", "--from", store, "--to", fresh_store]) == 0
    encrypted = serving(fresh_store, encryption_key=KEY)
    assert seen(encrypted, secret) == before
    encrypted.stop()
    assert words_stored(fresh_store) == []
