"""Group commit: the writes that queue while the writer is busy are stored together, in
one transaction of the event store, and each answers for itself.

Each test holds the writer's thread until all its writes are queued, so what forms one
batch does not depend on timing; the event store's transactions are counted at the
recorder (one `insert_events` call is one transaction)."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from tests.conftest import RunningServer, _until

pytestmark = pytest.mark.both_stores

LLAMA = "projects/acme/deployments/llama"


def count_transactions(running: RunningServer) -> list[int]:
    """Each event-store transaction tried from now on: the number of events in it."""
    recorder = running.server.store.keys.recorder
    insert = recorder.insert_events
    stored: list[int] = []

    def counted(stored_events: Any, **kwargs: Any) -> Any:
        stored.append(len(stored_events))
        return insert(stored_events, **kwargs)

    recorder.insert_events = counted  # type: ignore[method-assign]
    return stored


@contextmanager
def writer_held(running: RunningServer, queued: int) -> Iterator[None]:
    """The writer's thread busy until `queued` writes wait behind it (the block sends
    them), then released."""
    writer = running.server.store.writer
    release = threading.Event()
    writer._thread.submit(release.wait)
    try:
        yield
        _until(lambda: len(writer._queue) >= queued)
    finally:
        release.set()


def outcome(future: grpc.Future) -> Any:
    """The reply, or the status code it failed with."""
    try:
        return future.result(timeout=30)
    except grpc.RpcError as error:
        return error.code()


def create(running: RunningServer, key_id: str, name: str = "batched") -> grpc.Future:
    return running.keys.CreateApiKey.future(
        pb.CreateApiKeyRequest(
            parent="projects/acme",
            api_key_id=key_id,
            api_key=pb.ApiKey(display_name=name, deployments=[LLAMA]),
        )
    )


def rename(running: RunningServer, key: pb.ApiKey, name: str, etag: str = "") -> grpc.Future:
    return running.keys.UpdateApiKey.future(
        pb.UpdateApiKeyRequest(
            api_key=pb.ApiKey(name=key.name, display_name=name, etag=etag),
            update_mask=FieldMask(paths=["display_name"]),
        )
    )


def allowed(running: RunningServer, secret: str) -> bool:
    verdict = running.validation.ValidateApiKey(
        vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)
    ).verdict
    return bool(verdict == vpb.VERDICT_ALLOWED)


def test_concurrent_creates_share_one_transaction_and_all_survive_a_restart(
    running: RunningServer,
) -> None:
    transactions = count_transactions(running)
    with writer_held(running, 64):
        futures = [create(running, f"batched-{n:02d}") for n in range(64)]
    replies: list[pb.CreateApiKeyResponse] = [outcome(f) for f in futures]

    assert all(isinstance(reply, pb.CreateApiKeyResponse) for reply in replies)
    assert transactions == [64]  # 64 creates, one event each, in one transaction
    assert len({reply.secret for reply in replies}) == 64
    # Answered only once projected: each key works at once.
    assert all(allowed(running, reply.secret) for reply in replies)

    running.restart()
    listed = running.keys.ListApiKeys(pb.ListApiKeysRequest(parent="projects/acme", page_size=100))
    assert sorted(key.name for key in listed.api_keys) == sorted(r.api_key.name for r in replies)
    assert all(allowed(running, reply.secret) for reply in replies)
    # Replayed from the events: their data key was stored with them.
    assert running.server.store.keys.get_key(replies[0].api_key.name).display_name == "batched"


def test_a_stale_etag_fails_alone_and_two_changes_of_one_key_in_a_batch_see_each_other(
    running: RunningServer,
) -> None:
    key = running.create("first").api_key
    other = running.create("other").api_key
    transactions = count_transactions(running)
    with writer_held(running, 5):
        renamed = rename(running, key, "second", etag=key.etag)
        stale = rename(running, key, "third", etag=key.etag)  # the etag the first one moved
        after = rename(running, key, "fourth")  # no etag: on the key as the first left it
        made = create(running, "made-in-the-batch")
        untouched = rename(running, other, "other renamed", etag=other.etag)

    assert outcome(stale) == grpc.StatusCode.ABORTED
    first, last = outcome(renamed).api_key, outcome(after).api_key
    assert (first.display_name, int(first.etag)) == ("second", int(key.etag) + 1)
    assert (last.display_name, int(last.etag)) == ("fourth", int(key.etag) + 2)
    assert outcome(made).api_key.display_name == "batched"
    assert outcome(untouched).api_key.display_name == "other renamed"
    assert transactions == [4]  # the four that held, together
    stored = running.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name)).api_key
    assert (stored.display_name, stored.etag) == ("fourth", last.etag)


def test_a_create_of_a_key_that_exists_fails_alone_and_the_rest_of_its_batch_is_stored(
    running: RunningServer,
) -> None:
    running.keys.CreateApiKey(
        pb.CreateApiKeyRequest(
            parent="projects/acme",
            api_key_id="taken",
            api_key=pb.ApiKey(display_name="taken", deployments=[LLAMA]),
        )
    )
    transactions = count_transactions(running)
    with writer_held(running, 4):
        before = create(running, "before-it")
        taken = create(running, "taken")
        twice = [create(running, "made-twice"), create(running, "made-twice")]

    assert outcome(taken) == grpc.StatusCode.ALREADY_EXISTS
    assert sorted(map(str, map(outcome, twice))).count(str(grpc.StatusCode.ALREADY_EXISTS)) == 1
    assert allowed(running, outcome(before).secret)
    # The batch's transaction was refused (the store's own check of a name taken), and
    # its writes were tried one by one instead: none was lost, none stored twice.
    assert transactions == [4, 1, 1, 1, 1]
    listed = running.keys.ListApiKeys(pb.ListApiKeysRequest(parent="projects/acme"))
    assert sorted(k.name.rsplit("/", 1)[1] for k in listed.api_keys) == [
        "before-it",
        "made-twice",
        "taken",
    ]


def test_a_create_and_its_retry_in_one_batch_make_one_key_and_one_secret(
    running: RunningServer,
) -> None:
    request = pb.CreateApiKeyRequest(
        parent="projects/acme",
        request_id="6f1c1f5e-8a63-4a57-9d87-1f0e6c1d2b3a",
        api_key=pb.ApiKey(display_name="retried", deployments=[LLAMA]),
    )
    with writer_held(running, 2):
        first, retry = (running.keys.CreateApiKey.future(request) for _ in range(2))
    replies = [outcome(first), outcome(retry)]

    assert replies[0].api_key.name == replies[1].api_key.name
    assert sorted(bool(reply.secret) for reply in replies) == [False, True]
    listed = running.keys.ListApiKeys(pb.ListApiKeysRequest(parent="projects/acme"))
    assert [key.name for key in listed.api_keys] == [replies[0].api_key.name]
