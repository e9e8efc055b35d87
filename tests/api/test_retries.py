"""Concurrency and retries: etags guard against lost updates, request ids make every
mutating RPC safe to send again."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from tests.conftest import START, RunningServer

pytestmark = pytest.mark.both_stores

PROJECT = "projects/acme"
LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"
PHI = "projects/acme/deployments/phi-3"


def get(running: RunningServer, name: str) -> pb.ApiKey:
    key: pb.ApiKey = running.keys.GetApiKey(pb.GetApiKeyRequest(name=name)).api_key
    return key


def all_keys(running: RunningServer) -> list[pb.ApiKey]:
    request = pb.ListApiKeysRequest(parent=PROJECT, show_deleted=True, page_size=1000)
    return list(running.keys.ListApiKeys(request).api_keys)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    code: grpc.StatusCode = raised.value.code()
    return code


def new_request_id() -> str:
    return str(uuid.uuid4())


# Each mutating RPC, as a function of (running, key name, etag, request_id) that applies
# a change to a key created by `running.create()` (deployment LLAMA, no expiry).
Mutation = Callable[[RunningServer, str, str, str], pb.ApiKey]


def rename(running: RunningServer, name: str, etag: str, request_id: str) -> pb.ApiKey:
    request = pb.UpdateApiKeyRequest(
        api_key=pb.ApiKey(name=name, display_name="renamed", etag=etag),
        update_mask=FieldMask(paths=["display_name"]),
        request_id=request_id,
    )
    key: pb.ApiKey = running.keys.UpdateApiKey(request).api_key
    return key


def set_expiry(running: RunningServer, name: str, etag: str, request_id: str) -> pb.ApiKey:
    expiry = Timestamp()
    expiry.FromDatetime(START + timedelta(days=30))  # the same in a retry
    request = pb.UpdateApiKeyRequest(
        api_key=pb.ApiKey(name=name, expire_time=expiry, etag=etag), request_id=request_id
    )
    key: pb.ApiKey = running.keys.UpdateApiKey(request).api_key
    return key


def attach_mistral(running: RunningServer, name: str, etag: str, request_id: str) -> pb.ApiKey:
    request = pb.AttachDeploymentRequest(
        name=name, deployment=MISTRAL, etag=etag, request_id=request_id
    )
    key: pb.ApiKey = running.keys.AttachDeployment(request).api_key
    return key


def detach_llama(running: RunningServer, name: str, etag: str, request_id: str) -> pb.ApiKey:
    request = pb.DetachDeploymentRequest(
        name=name, deployment=LLAMA, etag=etag, request_id=request_id
    )
    key: pb.ApiKey = running.keys.DetachDeployment(request).api_key
    return key


def delete(running: RunningServer, name: str, etag: str, request_id: str) -> pb.ApiKey:
    request = pb.DeleteApiKeyRequest(name=name, etag=etag, request_id=request_id)
    key: pb.ApiKey = running.keys.DeleteApiKey(request).api_key
    return key


MUTATIONS = [
    pytest.param(rename, id="update-details"),
    pytest.param(set_expiry, id="update-expiry"),
    pytest.param(attach_mistral, id="attach"),
    pytest.param(detach_llama, id="detach"),
    pytest.param(delete, id="delete"),
]


def touch(running: RunningServer, name: str) -> pb.ApiKey:
    """Some other client's change, which makes every earlier etag stale."""
    request = pb.UpdateApiKeyRequest(
        api_key=pb.ApiKey(name=name, description=f"touched at {running.clock.now}")
    )
    running.clock.advance(seconds=1)
    key: pb.ApiKey = running.keys.UpdateApiKey(request).api_key
    return key


# --- etags --------------------------------------------------------------------------------


def test_every_change_gives_a_new_etag_that_get_and_list_agree_on(
    running: RunningServer,
) -> None:
    name = running.create().api_key.name
    etags = [get(running, name).etag]
    for change in (rename, set_expiry, attach_mistral, detach_llama, delete):
        changed = change(running, name, "", "")
        assert changed.etag == get(running, name).etag == all_keys(running)[0].etag
        etags.append(changed.etag)
    assert len(set(etags)) == len(etags)


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_stale_etag_is_aborted_and_writes_nothing(
    running: RunningServer, mutation: Mutation
) -> None:
    created = running.create()
    name = created.api_key.name
    current = touch(running, name)

    with pytest.raises(grpc.RpcError) as raised:
        mutation(running, name, created.api_key.etag, new_request_id())
    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert get(running, name) == current
    assert all_keys(running) == [current]
    verdict = running.validation.ValidateApiKey(
        vpb.ValidateApiKeyRequest(secret=created.secret, deployment=LLAMA)
    ).verdict
    assert verdict == vpb.VERDICT_ALLOWED


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_current_etag_applies_the_change(running: RunningServer, mutation: Mutation) -> None:
    name = running.create().api_key.name
    current = touch(running, name)
    changed = mutation(running, name, current.etag, new_request_id())
    assert changed.etag != current.etag
    assert changed != current
    assert get(running, name) == changed


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_empty_etag_applies_unconditionally(running: RunningServer, mutation: Mutation) -> None:
    name = running.create().api_key.name
    current = touch(running, name)
    changed = mutation(running, name, "", "")
    assert changed.etag != current.etag
    assert get(running, name) == changed


def test_concurrent_writers_with_the_same_etag_exactly_one_wins(running: RunningServer) -> None:
    created = running.create(deployments=()).api_key
    deployments = [f"projects/acme/deployments/model-{i}" for i in range(12)]
    calls = [
        running.keys.AttachDeployment.future(
            pb.AttachDeploymentRequest(name=created.name, deployment=d, etag=created.etag)
        )
        for d in deployments
    ]
    succeeded = []
    for deployment, call in zip(deployments, calls, strict=True):
        try:
            call.result()
            succeeded.append(deployment)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.ABORTED
    assert len(succeeded) == 1
    assert list(get(running, created.name).deployments) == succeeded


def test_concurrent_writers_without_etag_lose_no_update(running: RunningServer) -> None:
    name = running.create(deployments=()).api_key.name
    deployments = [f"projects/acme/deployments/model-{i}" for i in range(12)]
    calls = [
        running.keys.AttachDeployment.future(pb.AttachDeploymentRequest(name=name, deployment=d))
        for d in deployments
    ]
    for call in calls:
        call.result()
    assert sorted(get(running, name).deployments) == sorted(deployments)


# --- request ids: create ------------------------------------------------------------------


@pytest.mark.parametrize("api_key_id", ["", "retried-key"], ids=["server-picked-id", "given-id"])
def test_retried_create_returns_the_same_key_without_secret(
    running: RunningServer, api_key_id: str
) -> None:
    request = pb.CreateApiKeyRequest(
        parent=PROJECT,
        api_key_id=api_key_id,
        api_key=pb.ApiKey(display_name="retried", deployments=[LLAMA]),
        request_id=new_request_id(),
    )
    first = running.keys.CreateApiKey(request)
    running.clock.advance(minutes=1)
    retry = running.keys.CreateApiKey(request)

    assert first.secret
    assert retry.secret == ""
    assert retry.api_key == first.api_key
    assert all_keys(running) == [first.api_key]
    verdict = running.validation.ValidateApiKey(
        vpb.ValidateApiKeyRequest(secret=first.secret, deployment=LLAMA)
    ).verdict
    assert verdict == vpb.VERDICT_ALLOWED


def test_creates_with_different_request_ids_make_different_keys(running: RunningServer) -> None:
    def create() -> pb.CreateApiKeyResponse:
        response: pb.CreateApiKeyResponse = running.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=PROJECT,
                api_key=pb.ApiKey(display_name="same"),
                request_id=new_request_id(),
            )
        )
        return response

    first, second = create(), create()
    assert first.secret and second.secret
    assert first.api_key.name != second.api_key.name
    assert len(all_keys(running)) == 2


def test_retried_create_returns_the_key_as_it_is_now(running: RunningServer) -> None:
    request = pb.CreateApiKeyRequest(
        parent=PROJECT,
        api_key=pb.ApiKey(display_name="original", deployments=[LLAMA]),
        request_id=new_request_id(),
    )
    first = running.keys.CreateApiKey(request)
    renamed = rename(running, first.api_key.name, "", "")
    retry = running.keys.CreateApiKey(request)
    assert retry.secret == ""
    assert retry.api_key == renamed
    assert len(all_keys(running)) == 1


def test_retried_create_of_a_key_with_expiry_succeeds_after_that_expiry(
    running: RunningServer,
) -> None:
    """The retry applies nothing, so the expiry's "must be in the future" rule, checked
    when the key was made, has nothing to check the second time."""
    expiry = Timestamp()
    expiry.FromDatetime(running.clock.now + timedelta(hours=1))
    request = pb.CreateApiKeyRequest(
        parent=PROJECT,
        api_key=pb.ApiKey(display_name="short-lived", expire_time=expiry),
        request_id=new_request_id(),
    )
    first = running.keys.CreateApiKey(request)
    running.clock.advance(hours=2)
    retry = running.keys.CreateApiKey(request)
    assert retry.secret == ""
    assert retry.api_key == first.api_key
    assert len(all_keys(running)) == 1


def test_retried_create_is_recognised_after_a_restart(running: RunningServer) -> None:
    request = pb.CreateApiKeyRequest(
        parent=PROJECT, api_key=pb.ApiKey(display_name="durable"), request_id=new_request_id()
    )
    first = running.keys.CreateApiKey(request)
    running.restart()
    retry = running.keys.CreateApiKey(request)
    assert retry.secret == ""
    assert retry.api_key == first.api_key
    assert len(all_keys(running)) == 1


def test_concurrent_duplicates_of_one_create_make_one_key(running: RunningServer) -> None:
    """A client that gives up waiting and resends while the first attempt still runs."""
    request = pb.CreateApiKeyRequest(
        parent=PROJECT, api_key=pb.ApiKey(display_name="impatient"), request_id=new_request_id()
    )
    calls = [running.keys.CreateApiKey.future(request) for _ in range(8)]
    responses = [call.result() for call in calls]
    assert len({r.api_key.name for r in responses}) == 1
    assert sum(1 for r in responses if r.secret) == 1
    assert len(all_keys(running)) == 1


# --- request ids: changes -----------------------------------------------------------------


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_retried_change_returns_the_key_and_records_nothing_new(
    running: RunningServer, mutation: Mutation
) -> None:
    name = running.create().api_key.name
    request_id = new_request_id()
    first = mutation(running, name, "", request_id)
    running.clock.advance(minutes=1)

    retry = mutation(running, name, "", request_id)
    assert retry == first
    assert get(running, name) == first
    assert all_keys(running) == [first]


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_retried_change_with_its_original_etag_succeeds(
    running: RunningServer, mutation: Mutation
) -> None:
    """A retry resends the request as it was; the etag it carries was made stale by the
    first attempt itself, which must not turn the retry into ABORTED."""
    created = running.create().api_key
    request_id = new_request_id()
    first = mutation(running, created.name, created.etag, request_id)
    retry = mutation(running, created.name, created.etag, request_id)
    assert retry == first
    assert get(running, created.name) == first


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_retried_change_returns_the_key_as_it_is_after_later_changes(
    running: RunningServer, mutation: Mutation
) -> None:
    name = running.create().api_key.name
    request_id = new_request_id()
    mutation(running, name, "", request_id)
    later = pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=name, description="later"))
    if get(running, name).state == pb.ApiKey.STATE_ACTIVE:
        running.keys.UpdateApiKey(later)
    now = get(running, name)

    retry = mutation(running, name, "", request_id)
    assert retry == now
    assert get(running, name) == now


def test_retried_detach_after_the_deployment_is_gone_succeeds(running: RunningServer) -> None:
    name = running.create(deployments=(LLAMA, MISTRAL)).api_key.name
    request = pb.DetachDeploymentRequest(name=name, deployment=LLAMA, request_id=new_request_id())
    first = running.keys.DetachDeployment(request).api_key
    retry = running.keys.DetachDeployment(request).api_key
    assert retry == first
    assert list(retry.deployments) == [MISTRAL]

    fresh = pb.DetachDeploymentRequest(name=name, deployment=LLAMA, request_id=new_request_id())
    assert code_of(lambda: running.keys.DetachDeployment(fresh)) == grpc.StatusCode.NOT_FOUND


def test_retried_attach_of_an_attached_deployment_succeeds(running: RunningServer) -> None:
    name = running.create(deployments=(LLAMA,)).api_key.name
    request = pb.AttachDeploymentRequest(name=name, deployment=PHI, request_id=new_request_id())
    first = running.keys.AttachDeployment(request).api_key
    retry = running.keys.AttachDeployment(request).api_key
    assert retry == first
    assert list(retry.deployments) == [LLAMA, PHI]

    fresh = pb.AttachDeploymentRequest(name=name, deployment=PHI, request_id=new_request_id())
    assert code_of(lambda: running.keys.AttachDeployment(fresh)) == grpc.StatusCode.ALREADY_EXISTS


def test_retried_delete_of_a_deleted_key_succeeds(running: RunningServer) -> None:
    name = running.create().api_key.name
    request = pb.DeleteApiKeyRequest(name=name, request_id=new_request_id())
    first = running.keys.DeleteApiKey(request).api_key
    running.clock.advance(hours=1)
    retry = running.keys.DeleteApiKey(request).api_key
    assert retry == first
    assert retry.state == pb.ApiKey.STATE_DELETED

    fresh = pb.DeleteApiKeyRequest(name=name, request_id=new_request_id())
    code = code_of(lambda: running.keys.DeleteApiKey(fresh))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_retried_update_does_not_undo_a_later_update(running: RunningServer) -> None:
    name = running.create(display_name="one").api_key.name

    @dataclass
    class Rename:
        display_name: str
        request_id: str

        def send(self) -> pb.ApiKey:
            request = pb.UpdateApiKeyRequest(
                api_key=pb.ApiKey(name=name, display_name=self.display_name),
                request_id=self.request_id,
            )
            key: pb.ApiKey = running.keys.UpdateApiKey(request).api_key
            return key

    to_two = Rename("two", new_request_id())
    to_two.send()
    three = Rename("three", new_request_id()).send()
    assert to_two.send() == three
    assert get(running, name).display_name == "three"


def test_retried_update_of_details_and_expiry_records_neither_again(
    running: RunningServer,
) -> None:
    name = running.create().api_key.name
    expiry = Timestamp()
    expiry.FromDatetime(running.clock.now + timedelta(days=2))
    request = pb.UpdateApiKeyRequest(
        api_key=pb.ApiKey(name=name, display_name="both", expire_time=expiry),
        request_id=new_request_id(),
    )
    first = running.keys.UpdateApiKey(request).api_key
    # Someone else sets another expiry; the retry must not put the old one back.
    other = Timestamp()
    other.FromDatetime(running.clock.now + timedelta(days=9))
    running.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=name, expire_time=other))
    )
    retry = running.keys.UpdateApiKey(request).api_key
    assert retry.expire_time == other
    assert retry.display_name == first.display_name == "both"
    assert retry == get(running, name)


def test_retried_change_is_recognised_after_a_restart(running: RunningServer) -> None:
    name = running.create(deployments=(LLAMA, MISTRAL)).api_key.name
    request = pb.DetachDeploymentRequest(name=name, deployment=LLAMA, request_id=new_request_id())
    first = running.keys.DetachDeployment(request).api_key
    running.restart()
    assert running.keys.DetachDeployment(request).api_key == first
