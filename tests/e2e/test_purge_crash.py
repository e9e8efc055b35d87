"""A purge killed at each of its steps (tests/e2e/purge_server.py), then `edgekeys serve`
restarted on the store: every acknowledged purge stands; the one in flight happened
whole or not at all; no purged key's words can be read by any RPC, nor found in the
database files (SQLite's main file and WAL), with or without an encryption key."""

import base64
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from tests.e2e.conftest import LLAMA, PROJECT, ROOT, Node, ServeProcess
from tests.e2e.purge_server import POINTS
from tests.postgres import fresh_database

VICTIM = f"{PROJECT}/apiKeys/victim-key"
# Where each kill point leaves the purge in flight: stored (whole) or not at all.
STORED = {
    "inside the purge's transaction": False,
    "after the purge's commit": True,
    "inside the catalog's transaction": True,
    "between the catalog and the audit log": True,
    "before the WAL is emptied": True,
}
assert STORED.keys() == POINTS.keys()


@dataclass(frozen=True)
class Made:
    name: str
    secret: str
    words: tuple[str, str]  # its display name and description


def make(node: Node, key_id: str) -> Made:
    tag = secrets.token_hex(6)
    words = (f"Name{tag}", f"Words{tag}")
    reply = node.keys.CreateApiKey(
        pb.CreateApiKeyRequest(
            parent=PROJECT,
            api_key_id=key_id,
            api_key=pb.ApiKey(display_name=words[0], description=words[1], deployments=[LLAMA]),
        ),
        timeout=10,
    )
    return Made(reply.api_key.name, reply.secret, words)


def delete_and_purge(node: Node, key: Made) -> None:
    node.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=key.name), timeout=10)
    node.keys.PurgeApiKey(pb.PurgeApiKeyRequest(name=key.name), timeout=10)


def everything_read(node: Node, keys: list[Made]) -> dict[str, str]:
    """Every reply an RPC gives about each key, as text; WatchEvents for all of them."""
    audit = audit_pb2_grpc.AuditServiceStub(node.channel)
    watch = audit.WatchEvents(apb.WatchEventsRequest(parent=PROJECT), timeout=1.5)
    watched: list[object] = []
    try:
        watched.extend(watch)
    except grpc.RpcError as ended:
        assert ended.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    read = {}
    for key in keys:
        got = node.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name)).api_key
        replies: list[object] = [
            got,
            node.keys.ListApiKeys(pb.ListApiKeysRequest(parent=PROJECT, show_deleted=True)),
            node.keys.LookupApiKey(pb.LookupApiKeyRequest(secret=key.secret)),
            audit.ListApiKeyEvents(apb.ListApiKeyEventsRequest(name=key.name)),
            audit.ListEvents(apb.ListEventsRequest(parent=PROJECT)),
            audit.GetApiKeyRevision(
                apb.GetApiKeyRevisionRequest(name=key.name, as_of_time=got.create_time)
            ),
            *watched,
        ]
        for version in range(1, int(got.etag) + 1):
            request = apb.GetApiKeyRevisionRequest(name=key.name, version=version)
            replies.append(audit.GetApiKeyRevision(request))
        read[key.name] = "\n".join(map(str, replies))
    return read


def stored_bytes(database: Path) -> bytes:
    return b"".join(
        path.read_bytes() for path in database.parent.glob(database.name + "*") if path.is_file()
    )


@pytest.fixture(params=["sqlite", "sqlite encrypted", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A store's URL and the environment its servers run with."""
    env = {**os.environ}
    env.pop("EDGEKEYS_ENCRYPTION_KEY", None)
    if request.param == "sqlite encrypted":
        env["EDGEKEYS_ENCRYPTION_KEY"] = base64.b64encode(os.urandom(32)).decode()
    if request.param == "postgres":
        with fresh_database() as url:
            yield url, env
        return
    yield f"sqlite:///{tmp_path / 'edgekeys.db'}", env


@pytest.mark.parametrize("point", list(STORED))
def test_a_purge_killed_at_any_step_stands_whole_or_not_at_all_and_leaves_no_words(
    store: tuple[str, dict[str, str]], point: str, tmp_path: Path
) -> None:
    url, env = store
    killed = ServeProcess(url)
    killed.process = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.purge_server", url, str(killed.port), point, VICTIM],
        cwd=ROOT,
        env=env,
    )
    node = Node(killed)
    try:
        killed.wait_serving()
        kept = make(node, "kept-key")
        acked = [make(node, f"purged-{n}") for n in range(3)]
        for key in acked:
            delete_and_purge(node, key)
        victim = make(node, "victim-key")
        with pytest.raises(grpc.RpcError) as cut:
            delete_and_purge(node, victim)
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
        assert killed.process.wait(30) == -signal.SIGKILL
    finally:
        node.kill()

    restarted = ServeProcess(url)
    restarted.env = {**env, **{k: v for k, v in restarted.env.items() if k.startswith("EDGEKEYS")}}
    node = Node(restarted)
    node.start()
    try:
        purged = [*acked, victim] if STORED[point] else acked
        whole = [kept] if STORED[point] else [kept, victim]  # not purged, not in part
        read = everything_read(node, [*purged, *whole])
        for key in purged:
            assert not [word for word in key.words if word in read[key.name]]
            assert node.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name)).api_key.HasField(
                "purge_time"
            )
        for key in whole:
            assert all(word in read[key.name] for word in key.words)
            got = node.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name)).api_key
            assert not got.HasField("purge_time")
            assert (got.display_name, got.description) == key.words
        if url.startswith("sqlite:///"):
            files = stored_bytes(Path(url.removeprefix("sqlite:///")))
            assert not [w for key in purged for w in key.words if w.encode() in files]
            plain = "EDGEKEYS_ENCRYPTION_KEY" not in env
            assert (kept.words[0].encode() in files) == plain  # the search finds what is there
    finally:
        node.kill()
