"""ValidateApiKey and ValidateApiKeys: every verdict, the expiry boundary on the injected
clock, and no window between a change and the verdicts that follow it."""

from collections.abc import Callable
from datetime import datetime, timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from service.domain import keyformat
from tests.conftest import RunningServer

pytestmark = pytest.mark.both_stores

LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"
OTHER_PROJECT = "projects/globex/deployments/llama"


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


def validate(
    running: RunningServer, secret: str, deployment: str = LLAMA
) -> vpb.ValidateApiKeyResponse:
    request = vpb.ValidateApiKeyRequest(secret=secret, deployment=deployment)
    response: vpb.ValidateApiKeyResponse = running.validation.ValidateApiKey(request)
    return response


def validate_many(
    running: RunningServer, items: list[tuple[str, str]]
) -> list[vpb.ValidateApiKeyResponse]:
    request = vpb.ValidateApiKeysRequest(
        requests=[vpb.ValidateApiKeyRequest(secret=s, deployment=d) for s, d in items]
    )
    return list(running.validation.ValidateApiKeys(request).responses)


def set_expiry(running: RunningServer, name: str, moment: datetime | None) -> None:
    api_key = pb.ApiKey(name=name)
    if moment is not None:
        api_key.expire_time.CopyFrom(stamp(moment))
    running.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(api_key=api_key, update_mask=FieldMask(paths=["expire_time"]))
    )


def unknown_secret() -> str:
    secret = keyformat.new_secret()
    assert keyformat.is_well_formed(secret)
    return secret


def with_char_replaced(secret: str, index: int) -> str:
    replacement = "A" if secret[index] != "A" else "B"
    return secret[:index] + replacement + secret[index + 1 :]


# --- verdicts -----------------------------------------------------------------------------


def test_live_attached_key_is_allowed_naming_the_key_and_its_expiry(
    running: RunningServer,
) -> None:
    expiry = running.clock.now + timedelta(days=3)
    created = running.create(deployments=(LLAMA, MISTRAL), expire_time=stamp(expiry))
    for deployment in (LLAMA, MISTRAL):
        response = validate(running, created.secret, deployment)
        assert response.verdict == vpb.VERDICT_ALLOWED
        assert response.api_key == created.api_key.name
        assert response.expire_time == stamp(expiry)


def test_allowed_key_that_never_expires_has_no_expire_time(running: RunningServer) -> None:
    created = running.create()
    response = validate(running, created.secret)
    assert response.verdict == vpb.VERDICT_ALLOWED
    assert response.api_key == created.api_key.name
    assert not response.HasField("expire_time")


def test_unknown_well_formed_secret_is_not_found_naming_nothing(running: RunningServer) -> None:
    running.create()
    response = validate(running, unknown_secret())
    assert response == vpb.ValidateApiKeyResponse(verdict=vpb.VERDICT_NOT_FOUND)


def test_deleted_key_is_not_found_exactly_like_an_unknown_one(running: RunningServer) -> None:
    created = running.create(expire_time=stamp(running.clock.now + timedelta(days=1)))
    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=created.api_key.name))

    deleted = validate(running, created.secret)
    unknown = validate(running, unknown_secret())
    assert deleted.verdict == vpb.VERDICT_NOT_FOUND
    assert deleted.api_key == ""
    assert not deleted.HasField("expire_time")
    assert deleted.SerializeToString() == unknown.SerializeToString()


def test_expired_key_is_expired_naming_the_key(running: RunningServer) -> None:
    expiry = running.clock.now + timedelta(hours=1)
    created = running.create(expire_time=stamp(expiry))
    running.clock.advance(hours=5)
    response = validate(running, created.secret)
    assert response.verdict == vpb.VERDICT_EXPIRED
    assert response.api_key == created.api_key.name
    assert response.expire_time == stamp(expiry)


def test_key_not_attached_to_the_deployment_is_refused_for_it(running: RunningServer) -> None:
    created = running.create(deployments=(LLAMA,))
    for deployment in (MISTRAL, OTHER_PROJECT):
        response = validate(running, created.secret, deployment)
        assert response.verdict == vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED
        assert response.api_key == created.api_key.name


def test_key_with_no_deployments_reaches_none(running: RunningServer) -> None:
    created = running.create(deployments=())
    assert validate(running, created.secret).verdict == vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda s: "", id="empty"),
        pytest.param(lambda s: "edk_", id="prefix-only"),
        pytest.param(lambda s: s[:-1], id="truncated"),
        pytest.param(lambda s: s + "0", id="one-too-long"),
        pytest.param(lambda s: with_char_replaced(s, 10), id="typo-in-body"),
        pytest.param(lambda s: with_char_replaced(s, len(s) - 2), id="typo-in-checksum"),
        pytest.param(lambda s: "EDK_" + s[4:], id="wrong-prefix-case"),
        pytest.param(lambda s: "sk-" + s[3:], id="other-vendor-prefix"),
        pytest.param(lambda s: s[:20] + "_" + s[21:], id="not-base62"),
        pytest.param(lambda s: s[:20] + "é" + s[21:], id="non-ascii"),
        pytest.param(lambda s: s.swapcase(), id="swapped-case"),
        pytest.param(lambda s: f" {s}", id="leading-space"),
        pytest.param(lambda s: s * 2000, id="huge"),
    ],
)
def test_malformed_secret_is_malformed_naming_nothing(
    running: RunningServer, mangle: Callable[[str], str]
) -> None:
    created = running.create()
    mangled = mangle(created.secret)
    assert mangled != created.secret
    response = validate(running, mangled)
    assert response == vpb.ValidateApiKeyResponse(verdict=vpb.VERDICT_MALFORMED)
    assert validate(running, created.secret).verdict == vpb.VERDICT_ALLOWED


def test_a_malformed_deployment_name_is_an_invalid_argument(running: RunningServer) -> None:
    created = running.create()
    with pytest.raises(grpc.RpcError) as raised:
        validate(running, created.secret, "llama")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- expiry boundary ----------------------------------------------------------------------


def test_key_is_allowed_until_the_last_millisecond_and_expired_at_expire_time(
    running: RunningServer,
) -> None:
    expiry = running.clock.now + timedelta(hours=1)
    created = running.create(expire_time=stamp(expiry))

    running.clock.now = expiry - timedelta(milliseconds=1)
    assert validate(running, created.secret).verdict == vpb.VERDICT_ALLOWED
    running.clock.now = expiry
    assert validate(running, created.secret).verdict == vpb.VERDICT_EXPIRED
    running.clock.now = expiry + timedelta(milliseconds=1)
    assert validate(running, created.secret).verdict == vpb.VERDICT_EXPIRED


def test_expiry_boundary_holds_after_a_restart(running: RunningServer) -> None:
    expiry = running.clock.now + timedelta(days=1)
    created = running.create(expire_time=stamp(expiry))
    running.restart()

    running.clock.now = expiry - timedelta(milliseconds=1)
    assert validate(running, created.secret).verdict == vpb.VERDICT_ALLOWED
    running.clock.now = expiry
    assert validate(running, created.secret).verdict == vpb.VERDICT_EXPIRED


def test_expired_takes_precedence_over_an_unattached_deployment(running: RunningServer) -> None:
    created = running.create(expire_time=stamp(running.clock.now + timedelta(minutes=1)))
    running.clock.advance(minutes=1)
    assert validate(running, created.secret, MISTRAL).verdict == vpb.VERDICT_EXPIRED


# --- no window ----------------------------------------------------------------------------


def test_deleted_key_is_refused_by_the_very_next_validation(running: RunningServer) -> None:
    created = running.create()
    assert validate(running, created.secret).verdict == vpb.VERDICT_ALLOWED
    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=created.api_key.name))
    assert validate(running, created.secret).verdict == vpb.VERDICT_NOT_FOUND


def test_detached_deployment_is_refused_by_the_very_next_validation(
    running: RunningServer,
) -> None:
    created = running.create(deployments=(LLAMA, MISTRAL))
    assert validate(running, created.secret, LLAMA).verdict == vpb.VERDICT_ALLOWED
    running.keys.DetachDeployment(
        pb.DetachDeploymentRequest(name=created.api_key.name, deployment=LLAMA)
    )
    assert validate(running, created.secret, LLAMA).verdict == vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED
    assert validate(running, created.secret, MISTRAL).verdict == vpb.VERDICT_ALLOWED


def test_attached_deployment_is_allowed_by_the_very_next_validation(
    running: RunningServer,
) -> None:
    created = running.create(deployments=(LLAMA,))
    assert validate(running, created.secret, MISTRAL).verdict == vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED
    running.keys.AttachDeployment(
        pb.AttachDeploymentRequest(name=created.api_key.name, deployment=MISTRAL)
    )
    assert validate(running, created.secret, MISTRAL).verdict == vpb.VERDICT_ALLOWED


def test_earlier_expiry_is_enforced_by_the_very_next_validation(running: RunningServer) -> None:
    created = running.create()
    earlier = running.clock.now + timedelta(seconds=1)
    set_expiry(running, created.api_key.name, earlier)
    response = validate(running, created.secret)
    assert response.verdict == vpb.VERDICT_ALLOWED
    assert response.expire_time == stamp(earlier)

    running.clock.advance(seconds=1)
    assert validate(running, created.secret).verdict == vpb.VERDICT_EXPIRED


def test_removed_expiry_revives_an_expired_key_at_once(running: RunningServer) -> None:
    created = running.create(expire_time=stamp(running.clock.now + timedelta(minutes=1)))
    running.clock.advance(minutes=2)
    assert validate(running, created.secret).verdict == vpb.VERDICT_EXPIRED
    set_expiry(running, created.api_key.name, None)
    response = validate(running, created.secret)
    assert response.verdict == vpb.VERDICT_ALLOWED
    assert not response.HasField("expire_time")


# --- batches ------------------------------------------------------------------------------


def test_batch_answers_each_item_in_request_order(running: RunningServer) -> None:
    allowed = running.create(deployments=(LLAMA,))
    expiring = running.create(expire_time=stamp(running.clock.now + timedelta(minutes=1)))
    deleted = running.create()
    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=deleted.api_key.name))
    running.clock.advance(minutes=1)

    items = [
        (allowed.secret, MISTRAL),
        ("not a key", LLAMA),
        (allowed.secret, LLAMA),
        (expiring.secret, LLAMA),
        (deleted.secret, LLAMA),
        (unknown_secret(), LLAMA),
        (allowed.secret, LLAMA),
        (allowed.secret[:-1], LLAMA),
    ]
    responses = validate_many(running, items)

    assert [r.verdict for r in responses] == [
        vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED,
        vpb.VERDICT_MALFORMED,
        vpb.VERDICT_ALLOWED,
        vpb.VERDICT_EXPIRED,
        vpb.VERDICT_NOT_FOUND,
        vpb.VERDICT_NOT_FOUND,
        vpb.VERDICT_ALLOWED,
        vpb.VERDICT_MALFORMED,
    ]
    assert responses == [validate(running, s, d) for s, d in items]
    assert responses[2].api_key == allowed.api_key.name
    assert responses[3].api_key == expiring.api_key.name

    reversed_responses = validate_many(running, items[::-1])
    assert reversed_responses == responses[::-1]


def test_empty_batch_has_no_responses(running: RunningServer) -> None:
    assert validate_many(running, []) == []


def test_batch_of_one_thousand_gets_one_thousand_answers(running: RunningServer) -> None:
    created = running.create(deployments=(LLAMA,))
    items = [(created.secret, LLAMA if i % 3 else MISTRAL) for i in range(1000)]
    verdicts = [r.verdict for r in validate_many(running, items)]
    assert verdicts == [
        vpb.VERDICT_ALLOWED if i % 3 else vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED for i in range(1000)
    ]
