"""No API secret and no caller token, raw, hex or base64, anywhere edgekeys writes: its
log at DEBUG (text on SQLite, JSON on PostgreSQL), its error messages and responses, its
metrics, its events, its database files. Every registered RPC is run, by a real
`edgekeys serve`, with good and bad credentials."""

import base64
import contextlib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from service.domain import keyformat
from service.security import callers
from tests.calls import Metadata, Target, bearer, outcomes
from tests.e2e.conftest import LLAMA, PROJECT, Node, ServeProcess, free_port
from tests.postgres import fresh_database
from tests.stored import stored_bytes


def forms(secret: str) -> set[str]:
    """The secret as text, and its bytes and random part in hex and base64."""
    encodings = [secret.encode()]
    if secret.startswith(keyformat.PREFIX):
        body = secret[len(keyformat.PREFIX) : -keyformat.CHECKSUM_CHARS]
        number = sum(keyformat.ALPHABET.index(c) * 62**i for i, c in enumerate(reversed(body)))
        encodings.append(number.to_bytes(32, "big"))
    else:
        random = secret.removeprefix(callers.TOKEN_PREFIX)
        encodings.append(base64.urlsafe_b64decode(random + "=" * (-len(random) % 4)))
    found = {secret}
    for data in encodings:
        found |= {data.hex(), data.hex().upper()}
        found |= {base64.b64encode(data).decode().rstrip("=")}
        found |= {base64.urlsafe_b64encode(data).decode().rstrip("=")}
    return found


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'edgekeys.db'}"
        return
    with fresh_database() as url:
        yield url


def always(metadata: Metadata) -> Callable[[str], Metadata]:
    return lambda role: metadata


def shown(messages: list[Message]) -> str:
    """Responses as text, less the one field meant to carry a secret, once."""
    texts = []
    for message in messages:
        if isinstance(message, pb.CreateApiKeyResponse):
            message.ClearField("secret")
        texts.append(str(message))
    return "\n".join(texts)


def test_no_secret_or_token_leaks_anywhere(tmp_path: Path, database_url: str) -> None:
    root, root_digest = callers.new_token()
    unknown, _ = callers.new_token()
    callers_file = tmp_path / "callers.toml"
    callers_file.write_text(callers.caller_table("root", root_digest, callers.ROLES, ["*"], None))
    log = tmp_path / "edgekeys.log"
    metrics_address = f"127.0.0.1:{free_port()}"
    served = ServeProcess(
        database_url,
        callers_file=str(callers_file),
        log_level="DEBUG",
        log_format="json" if database_url.startswith("postgresql") else "text",
        metrics_address=metrics_address,
    )
    node = Node(served, log=log)
    node.start()
    seen: list[str] = []
    try:
        created = node.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=PROJECT,
                api_key=pb.ApiKey(display_name="hygiene", deployments=[LLAMA]),
            ),
            metadata=bearer(root),
        )
        spare = node.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=PROJECT, api_key=pb.ApiKey(display_name="spare", deployments=[LLAMA])
            ),
            metadata=bearer(root),
        )
        secrets = [created.secret, spare.secret]
        target = Target(PROJECT, created.api_key.name, created.secret, LLAMA)
        for metadata in (bearer(root), bearer(unknown), [("authorization", root)], []):
            for method, outcome in outcomes(node.channel, target, always(metadata)).items():
                if isinstance(outcome, list):
                    seen.append(f"{method}: {shown(outcome)}")
                else:
                    assert isinstance(outcome, grpc.RpcError)
                    seen.append(f"{method}: {outcome.code()} {outcome.details()}")
                    seen.append(repr(outcome.trailing_metadata()))
        events = audit_pb2_grpc.AuditServiceStub(node.channel).ListEvents(
            apb.ListEventsRequest(parent=PROJECT, page_size=1000), metadata=bearer(root)
        )
        assert {e.event_type for e in events.events} >= {"KeyCreated", "KeyDeleted"}
        seen.append(str(events))
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as reply:
            metrics = reply.read()
    finally:
        with contextlib.suppress(AssertionError):
            node.process.stop()
        node.channel.close()
    assert "DEBUG" in log.read_text()  # the log was at DEBUG
    assert "edgekeys.calls" in log.read_text() and "edgekeys.changes" in log.read_text()
    assert b"edgekeys_validations_total" in metrics
    everything = {
        "responses and errors": "\n".join(seen).encode(),
        "log": log.read_bytes(),
        "metrics": metrics,
        "stored": stored_bytes(database_url),
    }
    for secret in [*secrets, root, unknown]:
        for form in forms(secret):
            for where, text in everything.items():
                assert form.encode() not in text, f"{form!r} ({secret[:8]}…) found in {where}"
