"""A request id names one request, whatever key it touches (AIP-155): the same id with
another method, other fields or another key is refused and writes nothing; records go
after 24 hours. And a write that loses a race retries without holding up the others."""

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from eventsourcing.persistence import IntegrityError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from service.write import writer
from service.write.keystore import KeyStore
from tests.api.test_retries import LLAMA, MISTRAL, PROJECT, all_keys, get, new_request_id
from tests.conftest import FakeClock, RunningServer

pytestmark = pytest.mark.both_stores


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, list[str]]:
    """The code, the ErrorInfo reason and the fields named by a refused call."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    status = rpc_status.from_call(raised.value)
    assert status is not None
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return raised.value.code(), reason, fields


REUSED = (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED", ["request_id"])


def history(running: RunningServer, name: str) -> list[str]:
    audit = audit_pb2_grpc.AuditServiceStub(running.channel)
    events = audit.ListApiKeyEvents(apb.ListApiKeyEventsRequest(name=name)).events
    return [event.event_type for event in events]


def test_a_request_id_reused_by_a_delete_after_an_update_is_refused_and_the_key_stays_live(
    running: RunningServer,
) -> None:
    created = running.create()
    name, request_id = created.api_key.name, new_request_id()
    running.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(
            api_key=pb.ApiKey(name=name, description="first"), request_id=request_id
        )
    )

    delete = pb.DeleteApiKeyRequest(name=name, request_id=request_id)
    assert refusal(lambda: running.keys.DeleteApiKey(delete)) == REUSED
    assert get(running, name).state == pb.ApiKey.STATE_ACTIVE
    check = vpb.ValidateApiKeyRequest(secret=created.secret, deployment=LLAMA)
    assert running.validation.ValidateApiKey(check).verdict == vpb.VERDICT_ALLOWED
    assert history(running, name) == ["KeyCreated", "DetailsChanged"]


def test_a_request_id_reused_by_a_detach_after_an_attach_is_refused(
    running: RunningServer,
) -> None:
    name, request_id = running.create().api_key.name, new_request_id()
    attach = pb.AttachDeploymentRequest(name=name, deployment=MISTRAL, request_id=request_id)
    running.keys.AttachDeployment(attach)

    detach = pb.DetachDeploymentRequest(name=name, deployment=MISTRAL, request_id=request_id)
    assert refusal(lambda: running.keys.DetachDeployment(detach)) == REUSED
    assert list(get(running, name).deployments) == [LLAMA, MISTRAL]


def test_a_request_id_reused_by_the_same_method_with_other_fields_is_refused(
    running: RunningServer,
) -> None:
    name, request_id = running.create().api_key.name, new_request_id()
    first = pb.AttachDeploymentRequest(name=name, deployment=MISTRAL, request_id=request_id)
    running.keys.AttachDeployment(first)
    other = pb.AttachDeploymentRequest(
        name=name, deployment=f"{PROJECT}/deployments/phi-3", request_id=request_id
    )
    assert refusal(lambda: running.keys.AttachDeployment(other)) == REUSED
    assert list(get(running, name).deployments) == [LLAMA, MISTRAL]
    # The very same request again is a retry: it succeeds and records nothing new.
    assert list(running.keys.AttachDeployment(first).api_key.deployments) == [LLAMA, MISTRAL]
    assert history(running, name) == ["KeyCreated", "DeploymentAttached"]


def test_a_request_id_reused_on_another_key_is_refused_and_writes_nothing(
    running: RunningServer,
) -> None:
    one, two = running.create().api_key.name, running.create().api_key.name
    request_id = new_request_id()
    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=one, request_id=request_id))

    other_key = pb.DeleteApiKeyRequest(name=two, request_id=request_id)
    assert refusal(lambda: running.keys.DeleteApiKey(other_key)) == REUSED
    assert get(running, two).state == pb.ApiKey.STATE_ACTIVE
    assert history(running, two) == ["KeyCreated"]


def test_a_request_id_reused_by_another_create_is_refused_and_creates_nothing(
    running: RunningServer,
) -> None:
    request_id = new_request_id()

    def create(display_name: str, parent: str = PROJECT) -> pb.CreateApiKeyResponse:
        reply: pb.CreateApiKeyResponse = running.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=parent, api_key=pb.ApiKey(display_name=display_name), request_id=request_id
            )
        )
        return reply

    first = create("first")
    assert refusal(lambda: create("second")) == REUSED
    assert refusal(lambda: create("first", parent="projects/other")) == REUSED
    update = pb.UpdateApiKeyRequest(
        api_key=pb.ApiKey(name=first.api_key.name, display_name="x"), request_id=request_id
    )
    assert refusal(lambda: running.keys.UpdateApiKey(update)) == REUSED
    assert [k.name for k in all_keys(running)] == [first.api_key.name]
    assert create("first").secret == ""  # the same create again: a retry


def count_records(running: RunningServer, tmp_path: Path) -> int:
    url = running.database_url or f"sqlite:///{tmp_path / 'edgekeys.db'}"
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM request_ids").scalar() or 0)
    finally:
        engine.dispose()


def test_a_request_id_is_remembered_for_24_hours_then_forgotten(
    running: RunningServer, clock: FakeClock, tmp_path: Path
) -> None:
    name, request_id = running.create().api_key.name, new_request_id()
    update = pb.UpdateApiKeyRequest(
        api_key=pb.ApiKey(name=name, description="once"), request_id=request_id
    )
    running.keys.UpdateApiKey(update)
    delete = pb.DeleteApiKeyRequest(name=name, request_id=request_id)
    clock.advance(hours=23, minutes=59)
    assert refusal(lambda: running.keys.DeleteApiKey(delete)) == REUSED
    for n in range(3):
        running.keys.UpdateApiKey(
            pb.UpdateApiKeyRequest(
                api_key=pb.ApiKey(name=name, description=f"later {n}"),
                request_id=new_request_id(),
            )
        )
    assert count_records(running, tmp_path) == 4

    clock.advance(minutes=2)  # the first record is 24 h and a minute old
    assert running.keys.DeleteApiKey(delete).api_key.state == pb.ApiKey.STATE_DELETED
    assert count_records(running, tmp_path) == 4  # the old record went, the delete's came
    clock.advance(hours=25)
    other = pb.CreateApiKeyRequest(
        parent=PROJECT, api_key=pb.ApiKey(display_name="later"), request_id=new_request_id()
    )
    assert running.keys.CreateApiKey(other).secret  # a write sweeps what expired
    assert count_records(running, tmp_path) == 1


def test_a_change_that_loses_a_race_retries_without_holding_up_other_writes(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    contended = running.create().api_key.name
    monkeypatch.setattr(writer, "MAX_ATTEMPTS", 10_000)  # until released
    released = threading.Event()
    lost: list[int] = []
    save = KeyStore.save

    def race(store: KeyStore, *objects: Any, **kwargs: Any) -> Any:
        if not released.is_set() and any(getattr(o, "name", "") == contended for o in objects):
            lost.append(1)
            raise IntegrityError("another writer was first (the test)")
        return save(store, *objects, **kwargs)

    monkeypatch.setattr(KeyStore, "save", race)
    update = pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=contended, description="mine"))
    with ThreadPoolExecutor(1) as pool:
        updating = pool.submit(running.keys.UpdateApiKey, update, timeout=60)
        deadline = time.monotonic() + 10
        while len(lost) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        began = time.monotonic()
        for _ in range(5):
            running.create()
        took = time.monotonic() - began
        assert not updating.done()  # still retrying, off the writer's thread
        released.set()
        assert updating.result(30).api_key.description == "mine"
    assert took < 5
    assert get(running, contended).etag == "2"
