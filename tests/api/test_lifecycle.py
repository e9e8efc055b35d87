"""The product page's flows through the gRPC API: create, view, list, edit, delete,
and all of it surviving a restart of the server on the same store."""

import re
from collections.abc import Callable
from datetime import datetime, timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from tests.conftest import RunningServer

pytestmark = pytest.mark.both_stores

PROJECT = "projects/acme"
LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"
PHI = "projects/acme/deployments/phi-3"
SECRET_PATTERN = re.compile(r"edk_[0-9A-Za-z]{49}")
KEY_NAME_PATTERN = re.compile(r"projects/acme/apiKeys/[a-z][a-z0-9-]{2,61}[a-z0-9]")


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason of a call that must fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    status = rpc_status.from_call(raised.value)
    reasons = []
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    code: grpc.StatusCode = raised.value.code()
    return code, reasons[0] if reasons else ""


def get(running: RunningServer, name: str) -> pb.ApiKey:
    key: pb.ApiKey = running.keys.GetApiKey(pb.GetApiKeyRequest(name=name)).api_key
    return key


def list_keys(
    running: RunningServer,
    parent: str = PROJECT,
    page_size: int = 0,
    page_token: str = "",
    deployment: str = "",
    show_deleted: bool = False,
) -> pb.ListApiKeysResponse:
    request = pb.ListApiKeysRequest(
        parent=parent,
        page_size=page_size,
        page_token=page_token,
        deployment=deployment,
        show_deleted=show_deleted,
    )
    response: pb.ListApiKeysResponse = running.keys.ListApiKeys(request)
    return response


def names_of(response: pb.ListApiKeysResponse) -> list[str]:
    return [k.name for k in response.api_keys]


def list_all(running: RunningServer, page_size: int, deployment: str = "") -> list[pb.ApiKey]:
    """Every key a walk along next_page_token visits, in visiting order."""
    visited: list[pb.ApiKey] = []
    token = ""
    while True:
        page = list_keys(running, page_size=page_size, page_token=token, deployment=deployment)
        assert len(page.api_keys) <= page_size
        visited.extend(page.api_keys)
        token = page.next_page_token
        if not token:
            return visited


def create_many(running: RunningServer, count: int) -> list[str]:
    """`count` keys, created concurrently (the server still writes one at a time);
    their names in creation order."""
    names: list[str] = []
    batch = 100
    for start in range(0, count, batch):
        calls = [
            running.keys.CreateApiKey.future(
                pb.CreateApiKeyRequest(
                    parent=PROJECT,
                    api_key=pb.ApiKey(display_name=f"key {i}", deployments=[LLAMA]),
                )
            )
            for i in range(start, min(start + batch, count))
        ]
        created = [call.result() for call in calls]
        # Concurrent calls may commit in any order: the store's order is the truth,
        # and the keys' create times are all equal on the fake clock.
        names.extend(c.api_key.name for c in created)
    assert len(set(names)) == count
    return names


def update(running: RunningServer, api_key: pb.ApiKey, paths: tuple[str, ...] = ()) -> pb.ApiKey:
    response = running.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(api_key=api_key, update_mask=FieldMask(paths=list(paths)))
    )
    key: pb.ApiKey = response.api_key
    return key


def attach(running: RunningServer, name: str, deployment: str) -> pb.ApiKey:
    request = pb.AttachDeploymentRequest(name=name, deployment=deployment)
    key: pb.ApiKey = running.keys.AttachDeployment(request).api_key
    return key


def detach(running: RunningServer, name: str, deployment: str) -> pb.ApiKey:
    request = pb.DetachDeploymentRequest(name=name, deployment=deployment)
    key: pb.ApiKey = running.keys.DetachDeployment(request).api_key
    return key


def delete(running: RunningServer, name: str) -> pb.ApiKey:
    key: pb.ApiKey = running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=name)).api_key
    return key


def validate(running: RunningServer, secret: str, deployment: str) -> vpb.ValidateApiKeyResponse:
    request = vpb.ValidateApiKeyRequest(secret=secret, deployment=deployment)
    response: vpb.ValidateApiKeyResponse = running.validation.ValidateApiKey(request)
    return response


def assert_secret_absent(secret: str, *messages: Message) -> None:
    middle = secret[8:-4]  # what no hint may show
    for message in messages:
        assert secret.encode() not in message.SerializeToString()
        assert middle not in str(message)


# --- create -------------------------------------------------------------------------------


def test_create_returns_the_secret_once_with_all_given_fields(running: RunningServer) -> None:
    expiry = running.clock.now + timedelta(days=30)
    created = running.create(
        display_name="Production gateway",
        description="Used by the EU inference gateway",
        deployments=(LLAMA, MISTRAL, PHI),
        expire_time=stamp(expiry),
    )

    assert SECRET_PATTERN.fullmatch(created.secret)
    key = created.api_key
    assert KEY_NAME_PATTERN.fullmatch(key.name)
    assert key.display_name == "Production gateway"
    assert key.description == "Used by the EU inference gateway"
    assert list(key.deployments) == [LLAMA, MISTRAL, PHI]
    assert key.expire_time == stamp(expiry)
    assert key.state == pb.ApiKey.STATE_ACTIVE
    assert key.create_time == stamp(running.clock.now)
    assert key.update_time == stamp(running.clock.now)
    assert not key.HasField("delete_time")
    assert key.etag
    assert_secret_absent(created.secret, key)


def test_secret_hint_shows_at_most_the_prefix_and_four_characters_at_each_end(
    running: RunningServer,
) -> None:
    created = running.create()
    hint, secret = created.api_key.secret_hint, created.secret
    assert hint.startswith("edk_")
    assert hint != secret
    shown = re.findall(r"[0-9A-Za-z]+", hint[len("edk_") :])
    assert shown, "a hint shows some of the secret"
    assert all(len(part) <= 4 for part in shown)
    assert secret[len("edk_") :].startswith(shown[0])
    assert secret.endswith(shown[-1])
    assert len(shown) <= 2


def test_each_create_gets_its_own_secret_and_server_picked_name(running: RunningServer) -> None:
    first, second = running.create(), running.create()
    assert first.secret != second.secret
    assert first.api_key.name != second.api_key.name
    assert first.api_key.secret_hint != second.api_key.secret_hint


def test_create_with_explicit_id_names_the_key_and_refuses_the_id_twice(
    running: RunningServer,
) -> None:
    request = pb.CreateApiKeyRequest(
        parent=PROJECT, api_key_id="portal-key", api_key=pb.ApiKey(display_name="first")
    )
    created = running.keys.CreateApiKey(request)
    assert created.api_key.name == "projects/acme/apiKeys/portal-key"

    request.api_key.display_name = "second"
    code, reason = failure(lambda: running.keys.CreateApiKey(request))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert reason == "API_KEY_ALREADY_EXISTS"
    assert get(running, created.api_key.name) == created.api_key
    assert len(list_keys(running).api_keys) == 1


def test_create_with_a_deployment_of_another_project_is_invalid(running: RunningServer) -> None:
    code, _ = failure(lambda: running.create(deployments=(LLAMA, "projects/other/deployments/x1")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert not list_keys(running).api_keys


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(seconds=-1), timedelta(days=-400)])
def test_create_with_expiry_not_in_the_future_is_invalid(
    running: RunningServer, offset: timedelta
) -> None:
    moment = running.clock.now + offset
    code, reason = failure(lambda: running.create(expire_time=stamp(moment)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason == "EXPIRE_TIME_NOT_IN_FUTURE"
    assert not list_keys(running, show_deleted=True).api_keys


def test_expiry_with_sub_microsecond_precision_is_neither_refused_nor_moved_earlier(
    running: RunningServer,
) -> None:
    """Timestamps carry nanoseconds: an expiry 500 ns ahead still lies in the future, and
    a stored expiry may be rounded up to the store's precision but never down (that
    would end the key before the moment its owner chose)."""
    soon = stamp(running.clock.now)
    soon.nanos += 500
    created = running.create(expire_time=soon)
    assert created.api_key.expire_time.ToNanoseconds() >= soon.ToNanoseconds()

    precise = stamp(running.clock.now + timedelta(days=1))
    precise.nanos = 123_456_789
    key = running.create(expire_time=precise).api_key
    assert key.expire_time.ToNanoseconds() >= precise.ToNanoseconds()
    assert get(running, key.name).expire_time == key.expire_time


# --- view ---------------------------------------------------------------------------------


def test_get_and_list_return_the_key_without_its_secret(running: RunningServer) -> None:
    created = running.create(
        description="d",
        deployments=(LLAMA, MISTRAL),
        expire_time=stamp(running.clock.now + timedelta(hours=5)),
    )
    fetched = running.keys.GetApiKey(pb.GetApiKeyRequest(name=created.api_key.name))
    listed = list_keys(running)

    assert fetched.api_key == created.api_key
    assert list(listed.api_keys) == [created.api_key]
    assert_secret_absent(created.secret, fetched, listed)


def test_unknown_key_is_not_found_for_every_rpc(running: RunningServer) -> None:
    running.create()
    name = "projects/acme/apiKeys/no-such-key"
    calls: list[Callable[[], object]] = [
        lambda: running.keys.GetApiKey(pb.GetApiKeyRequest(name=name)),
        lambda: update(running, pb.ApiKey(name=name, display_name="x")),
        lambda: attach(running, name, MISTRAL),
        lambda: detach(running, name, LLAMA),
        lambda: delete(running, name),
    ]
    for call in calls:
        code, reason = failure(call)
        assert code == grpc.StatusCode.NOT_FOUND
        assert reason == "API_KEY_NOT_FOUND"


# --- edit general and expiration ----------------------------------------------------------


def test_update_mask_changes_only_the_named_fields(running: RunningServer) -> None:
    created = running.create(display_name="old name", description="old text").api_key
    running.clock.advance(minutes=5)

    renamed = update(
        running,
        pb.ApiKey(name=created.name, display_name="new name", description="ignored"),
        ("display_name",),
    )
    assert (renamed.display_name, renamed.description) == ("new name", "old text")
    assert renamed.update_time == stamp(running.clock.now)
    assert renamed.create_time == created.create_time
    assert renamed.etag != created.etag

    described = update(
        running,
        pb.ApiKey(name=created.name, display_name="ignored", description="new text"),
        ("description",),
    )
    assert (described.display_name, described.description) == ("new name", "new text")
    assert get(running, created.name) == described


def test_update_mask_can_clear_the_description(running: RunningServer) -> None:
    created = running.create(description="to be removed").api_key
    cleared = update(running, pb.ApiKey(name=created.name), ("description",))
    assert cleared.description == ""
    assert cleared.display_name == created.display_name


def test_update_without_mask_changes_the_fields_that_are_set(running: RunningServer) -> None:
    expiry = stamp(running.clock.now + timedelta(days=1))
    created = running.create(display_name="old", description="old", expire_time=expiry).api_key

    both = update(running, pb.ApiKey(name=created.name, display_name="new", description="text"))
    assert (both.display_name, both.description) == ("new", "text")
    assert both.expire_time == expiry, "an unset expire_time without a mask is left unchanged"

    only_name = update(running, pb.ApiKey(name=created.name, display_name="newer"))
    assert (only_name.display_name, only_name.description) == ("newer", "text")
    assert only_name.expire_time == expiry
    assert get(running, created.name) == only_name


def test_update_without_mask_sets_a_new_expiry(running: RunningServer) -> None:
    created = running.create().api_key
    later = stamp(running.clock.now + timedelta(days=90))
    updated = update(running, pb.ApiKey(name=created.name, expire_time=later))
    assert updated.expire_time == later
    assert updated.display_name == created.display_name
    assert get(running, created.name).expire_time == later


def test_expire_time_in_mask_but_unset_means_never_expires(running: RunningServer) -> None:
    old_expiry = running.clock.now + timedelta(hours=1)
    secret = running.create(expire_time=stamp(old_expiry)).secret
    name = list_keys(running).api_keys[0].name

    updated = update(running, pb.ApiKey(name=name), ("expire_time",))
    assert not updated.HasField("expire_time")
    assert not get(running, name).HasField("expire_time")
    assert not list_keys(running).api_keys[0].HasField("expire_time")

    running.clock.now = old_expiry + timedelta(days=365)
    assert validate(running, secret, LLAMA).verdict == vpb.VERDICT_ALLOWED


def test_update_with_expiry_not_in_the_future_is_invalid_and_writes_nothing(
    running: RunningServer,
) -> None:
    created = running.create().api_key
    code, reason = failure(
        lambda: update(
            running,
            pb.ApiKey(name=created.name, display_name="x", expire_time=stamp(running.clock.now)),
            ("display_name", "expire_time"),
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason == "EXPIRE_TIME_NOT_IN_FUTURE"
    assert get(running, created.name) == created


def test_update_mask_with_an_unknown_path_is_invalid(running: RunningServer) -> None:
    created = running.create().api_key
    code, _ = failure(
        lambda: update(
            running, pb.ApiKey(name=created.name, deployments=[MISTRAL]), ("deployments",)
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert get(running, created.name) == created


# --- edit deployments ---------------------------------------------------------------------


def test_attach_and_detach_change_the_deployments(running: RunningServer) -> None:
    created = running.create(deployments=(LLAMA,)).api_key
    running.clock.advance(seconds=10)

    attached = attach(running, created.name, MISTRAL)
    assert list(attached.deployments) == [LLAMA, MISTRAL]
    assert attached.update_time == stamp(running.clock.now)
    assert attached.etag != created.etag

    detached = detach(running, created.name, LLAMA)
    assert list(detached.deployments) == [MISTRAL]
    assert get(running, created.name) == detached
    assert list(list_keys(running).api_keys) == [detached]


def test_one_deployment_accepts_many_keys(running: RunningServer) -> None:
    first = running.create(deployments=(LLAMA,))
    second = running.create(deployments=(LLAMA, MISTRAL))
    for created in (first, second):
        assert validate(running, created.secret, LLAMA).verdict == vpb.VERDICT_ALLOWED
    assert names_of(list_keys(running, deployment=LLAMA)) == [
        first.api_key.name,
        second.api_key.name,
    ]


def test_attaching_an_attached_deployment_already_exists(running: RunningServer) -> None:
    created = running.create(deployments=(LLAMA,)).api_key
    code, reason = failure(lambda: attach(running, created.name, LLAMA))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert reason == "DEPLOYMENT_ALREADY_ATTACHED"
    assert get(running, created.name) == created


def test_detaching_a_deployment_not_attached_is_not_found(running: RunningServer) -> None:
    created = running.create(deployments=(LLAMA,)).api_key
    code, reason = failure(lambda: detach(running, created.name, MISTRAL))
    assert code == grpc.StatusCode.NOT_FOUND
    assert reason == "DEPLOYMENT_NOT_ATTACHED"
    assert get(running, created.name) == created


def test_attaching_a_deployment_of_another_project_is_invalid(running: RunningServer) -> None:
    created = running.create().api_key
    code, _ = failure(lambda: attach(running, created.name, "projects/globex/deployments/llama"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert get(running, created.name) == created


# --- delete -------------------------------------------------------------------------------


def test_delete_marks_the_key_deleted_and_get_still_returns_it(running: RunningServer) -> None:
    created = running.create(description="kept in history").api_key
    running.clock.advance(hours=2)

    deleted = delete(running, created.name)
    assert deleted.state == pb.ApiKey.STATE_DELETED
    assert deleted.delete_time == stamp(running.clock.now)
    assert deleted.update_time == stamp(running.clock.now)
    assert deleted.create_time == created.create_time
    assert (deleted.display_name, deleted.description) == (
        created.display_name,
        created.description,
    )
    assert get(running, created.name) == deleted


def test_a_deleted_key_cannot_change(running: RunningServer) -> None:
    created = running.create(deployments=(LLAMA,)).api_key
    deleted = delete(running, created.name)
    future = stamp(running.clock.now + timedelta(days=1))
    calls: list[Callable[[], object]] = [
        lambda: update(running, pb.ApiKey(name=created.name, display_name="revived")),
        lambda: update(running, pb.ApiKey(name=created.name, expire_time=future)),
        lambda: update(running, pb.ApiKey(name=created.name), ("expire_time",)),
        lambda: attach(running, created.name, MISTRAL),
        lambda: detach(running, created.name, LLAMA),
        lambda: delete(running, created.name),
    ]
    for call in calls:
        code, reason = failure(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert reason == "API_KEY_DELETED"
    assert get(running, created.name) == deleted


# --- list ---------------------------------------------------------------------------------


def test_list_returns_keys_oldest_first(running: RunningServer) -> None:
    ids = ["zulu", "alpha", "mike", "bravo"]
    for key_id in ids:
        running.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=PROJECT, api_key_id=key_id, api_key=pb.ApiKey(display_name=key_id)
            )
        )
        running.clock.advance(seconds=1)
    listed = list_keys(running)
    assert names_of(listed) == [f"projects/acme/apiKeys/{i}" for i in ids]
    assert not listed.next_page_token


def test_list_shows_only_the_projects_own_keys(running: RunningServer) -> None:
    ours = running.create().api_key
    theirs = running.create(parent="projects/globex", deployments=()).api_key
    assert names_of(list_keys(running)) == [ours.name]
    assert names_of(list_keys(running, parent="projects/globex")) == [theirs.name]


def test_list_page_size_zero_means_fifty(running: RunningServer) -> None:
    names = create_many(running, 51)
    first = list_keys(running, page_size=0)
    assert len(first.api_keys) == 50
    assert first.next_page_token
    rest = list_keys(running, page_size=0, page_token=first.next_page_token)
    assert len(rest.api_keys) == 1
    assert not rest.next_page_token
    assert sorted(names_of(first) + names_of(rest)) == sorted(names)


def test_list_page_size_above_one_thousand_is_capped_at_one_thousand(
    running: RunningServer,
) -> None:
    names = create_many(running, 1001)
    first = list_keys(running, page_size=1_000_000)
    assert len(first.api_keys) == 1000
    assert first.next_page_token
    rest = list_keys(running, page_size=2**31 - 1, page_token=first.next_page_token)
    assert len(rest.api_keys) == 1
    assert not rest.next_page_token
    assert sorted(names_of(first) + names_of(rest)) == sorted(names)


def test_list_with_negative_page_size_is_invalid(running: RunningServer) -> None:
    running.create()
    code, _ = failure(lambda: list_keys(running, page_size=-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_walking_page_tokens_visits_every_key_exactly_once_in_order(
    running: RunningServer,
) -> None:
    names = []
    for i in range(23):
        names.append(running.create(display_name=f"key {i}").api_key.name)
        running.clock.advance(seconds=1)
    for page_size in (1, 5, 22, 23, 24):
        assert [k.name for k in list_all(running, page_size)] == names


def test_list_filters_by_deployment(running: RunningServer) -> None:
    llama_only = running.create(deployments=(LLAMA,)).api_key.name
    both = running.create(deployments=(LLAMA, MISTRAL)).api_key.name
    mistral_only = running.create(deployments=(MISTRAL,)).api_key.name
    running.create(deployments=())

    assert names_of(list_keys(running, deployment=LLAMA)) == [llama_only, both]
    assert names_of(list_keys(running, deployment=MISTRAL)) == [both, mistral_only]
    assert names_of(list_keys(running, deployment=PHI)) == []
    assert [k.name for k in list_all(running, 1, deployment=MISTRAL)] == [both, mistral_only]

    detach(running, both, LLAMA)
    attach(running, mistral_only, LLAMA)
    assert names_of(list_keys(running, deployment=LLAMA)) == [llama_only, mistral_only]


def test_list_shows_deleted_keys_only_when_asked(running: RunningServer) -> None:
    kept = running.create().api_key.name
    gone = running.create().api_key.name
    delete(running, gone)

    assert names_of(list_keys(running)) == [kept]
    with_deleted = list_keys(running, show_deleted=True)
    assert names_of(with_deleted) == [kept, gone]
    assert [k.state for k in with_deleted.api_keys] == [
        pb.ApiKey.STATE_ACTIVE,
        pb.ApiKey.STATE_DELETED,
    ]
    assert with_deleted.api_keys[1] == get(running, gone)
    assert names_of(list_keys(running, deployment=LLAMA)) == [kept]
    assert names_of(list_keys(running, deployment=LLAMA, show_deleted=True)) == [kept, gone]


def test_total_size_counts_every_key_the_filters_match_on_every_page(
    running: RunningServer,
) -> None:
    names = [running.create(deployments=(LLAMA,)).api_key.name for _ in range(4)]
    running.create(deployments=(MISTRAL,))
    delete(running, names[3])
    running.create(parent="projects/globex", deployments=())

    first = list_keys(running, page_size=2)
    rest = list_keys(running, page_size=2, page_token=first.next_page_token)
    assert (first.total_size, rest.total_size) == (4, 4)
    assert list_keys(running, deployment=LLAMA).total_size == 3
    assert list_keys(running, deployment=LLAMA, show_deleted=True).total_size == 4
    assert list_keys(running, parent="projects/nobody").total_size == 0


def test_skip_leaves_out_that_many_keys_after_the_page_token(running: RunningServer) -> None:
    names = []
    for i in range(7):
        names.append(running.create(display_name=f"key {i}").api_key.name)
        running.clock.advance(seconds=1)

    def listed(**fields: object) -> pb.ListApiKeysResponse:
        reply: pb.ListApiKeysResponse = running.keys.ListApiKeys(
            pb.ListApiKeysRequest(parent=PROJECT, **fields)  # type: ignore[arg-type]
        )
        return reply

    assert names_of(listed(skip=2, page_size=2)) == names[2:4]
    first = listed(page_size=2)
    # skip is not part of the query a token is bound to: it counts from the token on
    after_token = listed(page_size=2, skip=1, page_token=first.next_page_token)
    assert names_of(after_token) == names[3:5]
    assert names_of(listed(page_size=2, page_token=after_token.next_page_token)) == names[5:7]
    beyond = listed(skip=7)
    assert (names_of(beyond), beyond.next_page_token, beyond.total_size) == ([], "", 7)
    code, _ = failure(lambda: listed(skip=-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# --- restart ------------------------------------------------------------------------------


def unused(key: pb.ApiKey) -> pb.ApiKey:
    key.ClearField("last_use_time")
    return key


def test_keys_edits_and_deletions_survive_a_restart(running: RunningServer) -> None:
    clock = running.clock
    plain = running.create(display_name="plain")
    clock.advance(minutes=1)
    edited = running.create(
        display_name="edited",
        deployments=(LLAMA,),
        expire_time=stamp(clock.now + timedelta(days=7)),
    )
    clock.advance(minutes=1)
    gone = running.create(display_name="gone", deployments=(LLAMA, MISTRAL))
    clock.advance(minutes=1)
    expiring = running.create(
        display_name="expiring", expire_time=stamp(clock.now + timedelta(hours=1))
    )
    clock.advance(minutes=1)
    update(running, pb.ApiKey(name=edited.api_key.name, display_name="renamed", description="x"))
    attach(running, edited.api_key.name, MISTRAL)
    detach(running, edited.api_key.name, LLAMA)
    update(running, pb.ApiKey(name=edited.api_key.name), ("expire_time",))
    delete(running, gone.api_key.name)
    clock.advance(hours=2)  # past `expiring`'s expiry

    secrets = [c.secret for c in (plain, edited, gone, expiring)]
    names = [c.api_key.name for c in (plain, edited, gone, expiring)]

    def answers() -> list[Message]:
        # last_use_time moves with the validations below: the rest must not move
        result: list[Message] = [unused(get(running, name)) for name in names]
        for show_deleted in (False, True):
            for deployment in ("", LLAMA, MISTRAL):
                listed = list_keys(running, show_deleted=show_deleted, deployment=deployment)
                for key in listed.api_keys:
                    unused(key)
                result.append(listed)
        result.extend(
            validate(running, secret, deployment)
            for secret in secrets
            for deployment in (LLAMA, MISTRAL)
        )
        return result

    before = answers()
    # The states the answers hold are the ones the edits made, not empty ones.
    assert get(running, names[1]).display_name == "renamed"
    assert get(running, names[2]).state == pb.ApiKey.STATE_DELETED
    assert [validate(running, s, MISTRAL).verdict for s in secrets] == [
        vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED,
        vpb.VERDICT_ALLOWED,
        vpb.VERDICT_NOT_FOUND,
        vpb.VERDICT_EXPIRED,
    ]

    running.restart()
    assert answers() == before
