"""projections/index.py: the verdicts a gateway gets, from the events keys record."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgekeys.v1.validation_pb2 import (
    VERDICT_ALLOWED,
    VERDICT_DEPLOYMENT_NOT_ALLOWED,
    VERDICT_EXPIRED,
    VERDICT_MALFORMED,
    VERDICT_NOT_FOUND,
)
from projections.index import ValidationIndex
from service.domain import keyformat
from service.domain.api_key import ApiKey
from service.domain.names import KeyName

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"
OTHER_PROJECTS_LLAMA = "projects/other/deployments/llama"


class Feed:
    """Hands the index every event a key has recorded, at increasing store positions."""

    def __init__(self, index: ValidationIndex) -> None:
        self.index = index
        self.position = 0

    def publish(self, key: ApiKey) -> None:
        for event in key.collect_events():
            assert isinstance(event, ApiKey.Event)
            self.position += 1
            self.index.apply(self.position, event)

    def create(
        self,
        key_id: str = "key-one",
        deployments: tuple[str, ...] = (LLAMA,),
        expire_time: datetime | None = None,
        project: str = "acme",
    ) -> tuple[ApiKey, str]:
        secret = keyformat.new_secret()
        key = ApiKey.create(
            KeyName(project, key_id),
            "a key",
            "",
            list(deployments),
            expire_time,
            secret_sha256=keyformat.digest(secret).hex(),
            secret_hint=keyformat.hint(secret),
            actor="alice",
            request_id="",
            now=NOW,
        )
        self.publish(key)
        return key, secret


def later(**delta: float) -> dict[str, Any]:
    """The context of a command run some time after the key was created."""
    return {"actor": "bob", "request_id": "", "now": NOW + timedelta(**delta)}


@pytest.fixture
def index() -> ValidationIndex:
    return ValidationIndex()


@pytest.fixture
def feed(index: ValidationIndex) -> Feed:
    return Feed(index)


def test_a_live_key_is_allowed_at_an_attached_deployment(
    index: ValidationIndex, feed: Feed
) -> None:
    key, secret = feed.create(deployments=(LLAMA, MISTRAL))

    for deployment in (LLAMA, MISTRAL):
        verdict, entry = index.check(secret, deployment, NOW)
        assert verdict == VERDICT_ALLOWED
        assert entry is not None
        assert entry.name == key.name == "projects/acme/apiKeys/key-one"
        assert entry.digest == keyformat.digest(secret)


@pytest.mark.parametrize(
    "presented",
    ["", "not-a-key", "edk_", "Bearer edk_x", "edk_" + "0" * 49, "x" * 10_000],
)
def test_a_malformed_secret_gets_malformed(
    index: ValidationIndex, feed: Feed, presented: str
) -> None:
    feed.create()

    assert index.check(presented, LLAMA, NOW) == (VERDICT_MALFORMED, None)


def test_a_mistyped_known_secret_is_malformed_not_not_found(
    index: ValidationIndex, feed: Feed
) -> None:
    _, secret = feed.create()
    replacement = "A" if secret[20] != "A" else "B"
    mistyped = secret[:20] + replacement + secret[21:]

    assert index.check(mistyped, LLAMA, NOW) == (VERDICT_MALFORMED, None)


def test_a_well_formed_unknown_secret_is_not_found(index: ValidationIndex, feed: Feed) -> None:
    feed.create()

    assert index.check(keyformat.new_secret(), LLAMA, NOW) == (VERDICT_NOT_FOUND, None)


def test_an_empty_index_finds_nothing(index: ValidationIndex) -> None:
    assert index.check(keyformat.new_secret(), LLAMA, NOW) == (VERDICT_NOT_FOUND, None)
    assert len(index) == 0


@pytest.mark.parametrize(
    "deployment", [MISTRAL, OTHER_PROJECTS_LLAMA, "", "projects/acme/deployments/llama2"]
)
def test_a_deployment_the_key_is_not_attached_to_is_not_allowed(
    index: ValidationIndex, feed: Feed, deployment: str
) -> None:
    key, secret = feed.create(deployments=(LLAMA,))

    verdict, entry = index.check(secret, deployment, NOW)

    assert verdict == VERDICT_DEPLOYMENT_NOT_ALLOWED
    assert entry is not None and entry.name == key.name


def test_a_key_without_deployments_is_allowed_nowhere(index: ValidationIndex, feed: Feed) -> None:
    _, secret = feed.create(deployments=())

    assert index.check(secret, LLAMA, NOW)[0] == VERDICT_DEPLOYMENT_NOT_ALLOWED


def test_a_key_is_allowed_until_the_millisecond_before_it_expires(
    index: ValidationIndex, feed: Feed
) -> None:
    expire_time = NOW + timedelta(days=30)
    _, secret = feed.create(expire_time=expire_time)

    verdict, entry = index.check(secret, LLAMA, expire_time - timedelta(milliseconds=1))

    assert verdict == VERDICT_ALLOWED
    assert entry is not None and entry.expire_time == expire_time


def test_a_key_is_expired_exactly_at_its_expire_time_and_after(
    index: ValidationIndex, feed: Feed
) -> None:
    expire_time = NOW + timedelta(days=30)
    key, secret = feed.create(expire_time=expire_time)

    for moment in (expire_time, expire_time + timedelta(microseconds=1), NOW + timedelta(days=999)):
        verdict, entry = index.check(secret, LLAMA, moment)
        assert verdict == VERDICT_EXPIRED
        assert entry is not None and entry.name == key.name


def test_a_key_that_never_expires_is_allowed_far_in_the_future(
    index: ValidationIndex, feed: Feed
) -> None:
    _, secret = feed.create(expire_time=None)

    assert index.check(secret, LLAMA, datetime(9999, 12, 31, tzinfo=UTC))[0] == VERDICT_ALLOWED


def test_a_deleted_key_is_not_found_like_one_that_never_existed(
    index: ValidationIndex, feed: Feed
) -> None:
    key, secret = feed.create("key-one")
    _, other_secret = feed.create("key-two")

    key.delete(**later(minutes=1))
    feed.publish(key)

    assert index.check(secret, LLAMA, NOW + timedelta(minutes=1)) == (VERDICT_NOT_FOUND, None)
    assert index.check(other_secret, LLAMA, NOW)[0] == VERDICT_ALLOWED
    assert len(index) == 1


def test_a_purged_key_stays_not_found_and_the_others_stay_allowed(
    index: ValidationIndex, feed: Feed
) -> None:
    key, secret = feed.create("key-one")
    _, other_secret = feed.create("key-two")
    key.delete(**later(minutes=1))
    key.purge_personal_data(**later(minutes=2))

    feed.publish(key)

    assert index.position == 4
    assert index.check(secret, LLAMA, NOW + timedelta(minutes=2)) == (VERDICT_NOT_FOUND, None)
    assert index.check(other_secret, LLAMA, NOW)[0] == VERDICT_ALLOWED
    assert len(index) == 1


def test_a_detached_deployment_stops_being_allowed(index: ValidationIndex, feed: Feed) -> None:
    key, secret = feed.create(deployments=(LLAMA, MISTRAL))

    key.detach(LLAMA, **later(minutes=1))
    feed.publish(key)

    assert index.check(secret, LLAMA, NOW)[0] == VERDICT_DEPLOYMENT_NOT_ALLOWED
    assert index.check(secret, MISTRAL, NOW)[0] == VERDICT_ALLOWED


def test_an_attached_deployment_starts_being_allowed(index: ValidationIndex, feed: Feed) -> None:
    key, secret = feed.create(deployments=(LLAMA,))
    assert index.check(secret, MISTRAL, NOW)[0] == VERDICT_DEPLOYMENT_NOT_ALLOWED

    key.attach(MISTRAL, **later(minutes=1))
    feed.publish(key)

    assert index.check(secret, MISTRAL, NOW)[0] == VERDICT_ALLOWED
    assert index.check(secret, LLAMA, NOW)[0] == VERDICT_ALLOWED


def test_an_earlier_expiry_takes_effect(index: ValidationIndex, feed: Feed) -> None:
    key, secret = feed.create(expire_time=None)

    key.change_expiry(NOW + timedelta(hours=2), **later(hours=1))
    feed.publish(key)

    assert index.check(secret, LLAMA, NOW + timedelta(hours=2, milliseconds=-1))[0] == (
        VERDICT_ALLOWED
    )
    assert index.check(secret, LLAMA, NOW + timedelta(hours=2))[0] == VERDICT_EXPIRED


def test_a_later_or_no_expiry_takes_effect(index: ValidationIndex, feed: Feed) -> None:
    key, secret = feed.create(expire_time=NOW + timedelta(hours=2))

    key.change_expiry(NOW + timedelta(days=2), **later(hours=1))
    feed.publish(key)
    assert index.check(secret, LLAMA, NOW + timedelta(days=1))[0] == VERDICT_ALLOWED
    assert index.check(secret, LLAMA, NOW + timedelta(days=2))[0] == VERDICT_EXPIRED

    key.change_expiry(None, **later(hours=1))
    feed.publish(key)
    assert index.check(secret, LLAMA, NOW + timedelta(days=3650))[0] == VERDICT_ALLOWED


def test_changed_details_leave_the_verdict_alone(index: ValidationIndex, feed: Feed) -> None:
    key, secret = feed.create()

    key.change_details("renamed", "described", **later(minutes=1))
    feed.publish(key)

    assert index.check(secret, LLAMA, NOW)[0] == VERDICT_ALLOWED


def test_the_index_remembers_the_last_position_it_applied(
    index: ValidationIndex, feed: Feed
) -> None:
    key, _ = feed.create("key-one")
    assert index.position == 1
    feed.create("key-two")
    key.change_details("renamed", None, **later(minutes=1))
    key.attach(MISTRAL, **later(minutes=1))
    feed.publish(key)

    assert index.position == feed.position == 4


def test_an_entry_a_reader_holds_is_never_changed_underneath_it(
    index: ValidationIndex, feed: Feed
) -> None:
    key, secret = feed.create(deployments=(LLAMA,))
    _, held = index.check(secret, LLAMA, NOW)

    key.attach(MISTRAL, **later(minutes=1))
    key.change_expiry(NOW + timedelta(days=1), **later(minutes=1))
    feed.publish(key)

    assert held is not None
    assert held.deployments == frozenset({LLAMA})
    assert held.expire_time is None
