"""The ApiKey aggregate on its own: the events each command records, the rules it
enforces, and that stored history replays to the same key under stable topics."""

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.utils import get_topic, resolve_topic

from service.domain import keyformat
from service.domain.api_key import MAX_DEPLOYMENTS, ApiKey, PersonalData
from service.domain.errors import (
    AlreadyPurged,
    DeploymentAlreadyAttached,
    DeploymentNotAttached,
    DeploymentOfOtherProject,
    DomainError,
    ExpiryNotInFuture,
    KeyIsDeleted,
    KeyNotDeleted,
    TooManyDeployments,
)
from service.domain.names import KeyName
from service.write.keystore import KeyStore

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
NAME = KeyName("acme", "key-one")
LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"
FOREIGN = "projects/other/deployments/llama"
KEY_ID = ApiKey.id_for(NAME)
SECRET = keyformat.new_secret()

# Stored history is decoded by these strings: they may never change.
TOPICS: dict[type[Any], str] = {
    ApiKey: "edgekeys:ApiKey",
    ApiKey.KeyCreated: "edgekeys:KeyCreated",
    ApiKey.DetailsChanged: "edgekeys:DetailsChanged",
    ApiKey.DeploymentAttached: "edgekeys:DeploymentAttached",
    ApiKey.DeploymentDetached: "edgekeys:DeploymentDetached",
    ApiKey.ExpiryChanged: "edgekeys:ExpiryChanged",
    ApiKey.KeyDeleted: "edgekeys:KeyDeleted",
    ApiKey.PersonalDataPurged: "edgekeys:PersonalDataPurged",
}


def new_key(
    deployments: list[str] | None = None,
    expire_time: datetime | None = None,
    *,
    actor: str = "alice",
    request_id: str = "req-create",
) -> ApiKey:
    return ApiKey.create(
        NAME,
        "Llama key",
        "for the llama demo",
        [LLAMA] if deployments is None else deployments,
        expire_time,
        secret_sha256=keyformat.digest(SECRET).hex(),
        secret_hint=keyformat.hint(SECRET),
        actor=actor,
        request_id=request_id,
        now=NOW,
    )


def settled_key(
    deployments: list[str] | None = None, expire_time: datetime | None = None
) -> ApiKey:
    """A key whose creation has been collected, so only later events are pending."""
    key = new_key(deployments, expire_time)
    key.collect_events()
    return key


def pending(key: ApiKey) -> list[ApiKey.Event]:
    events = list(key.collect_events())
    assert all(isinstance(event, ApiKey.Event) for event in events)
    return [event for event in events if isinstance(event, ApiKey.Event)]


def context(request_id: str, now: datetime = LATER) -> dict[str, Any]:
    return {"actor": "bob", "request_id": request_id, "now": now}


def personal(text: str | None) -> PersonalData:
    """Personal data of the key NAME."""
    return PersonalData(KEY_ID, text)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[KeyStore]:
    """A store that encrypts personal data the way the service does."""
    application = KeyStore(f"sqlite:///{tmp_path / 'events.db'}", lambda: NOW)
    yield application
    application.close()


# Creating a key


def test_create_records_key_created_with_actor_request_id_and_values() -> None:
    key = new_key([LLAMA, MISTRAL], NOW + timedelta(days=30), actor="alice", request_id="r-1")

    [event] = pending(key)

    assert isinstance(event, ApiKey.KeyCreated)
    assert event.actor == "alice"
    assert event.request_id == "r-1"
    assert event.timestamp == NOW
    assert event.originator_id == KEY_ID
    assert event.originator_version == 1
    assert event.name == "projects/acme/apiKeys/key-one"
    assert event.display_name == personal("Llama key")
    assert event.description == personal("for the llama demo")
    assert event.deployments == [LLAMA, MISTRAL]
    assert event.expire_time == NOW + timedelta(days=30)
    assert event.secret_sha256 == keyformat.digest(SECRET).hex()
    assert "r-1" not in str(vars(key))  # which requests took effect is kept apart
    assert (key.display_name, key.description) == ("Llama key", "for the llama demo")
    assert not key.is_deleted
    assert key.purge_time is None


def test_key_created_never_carries_the_secret() -> None:
    [event] = pending(new_key())

    assert all(SECRET not in repr(value) for value in vars(event).values())
    assert SECRET not in repr(event)
    assert SECRET[len(keyformat.PREFIX) : -4] not in repr(event)


def test_create_collapses_repeated_deployments_in_attach_order() -> None:
    key = new_key([MISTRAL, LLAMA, MISTRAL])

    assert key.deployments == [MISTRAL, LLAMA]


def test_create_refuses_a_deployment_of_another_project() -> None:
    with pytest.raises(DeploymentOfOtherProject):
        new_key([LLAMA, FOREIGN])


@pytest.mark.parametrize(
    "expire_time", [NOW, NOW - timedelta(microseconds=1), NOW - timedelta(days=1)]
)
def test_create_refuses_an_expiry_not_in_the_future(expire_time: datetime) -> None:
    with pytest.raises(ExpiryNotInFuture):
        new_key(expire_time=expire_time)


def test_create_accepts_an_expiry_just_after_now() -> None:
    key = new_key(expire_time=NOW + timedelta(microseconds=1))

    assert key.expire_time == NOW + timedelta(microseconds=1)


def deployments(count: int) -> list[str]:
    return [f"projects/acme/deployments/model-{n:03d}" for n in range(count)]


def test_create_accepts_exactly_the_maximum_of_deployments() -> None:
    assert MAX_DEPLOYMENTS == 100
    key = new_key(deployments(MAX_DEPLOYMENTS))

    assert len(key.deployments) == MAX_DEPLOYMENTS


def test_create_refuses_more_than_the_maximum_of_deployments() -> None:
    with pytest.raises(TooManyDeployments):
        new_key(deployments(MAX_DEPLOYMENTS + 1))


# Each command records exactly its event


Command = Callable[[ApiKey], None]


def expect_one_event(
    key: ApiKey, command: Command, event_class: type[ApiKey.Event], request_id: str
) -> ApiKey.Event:
    version = key.version
    command(key)
    [event] = pending(key)
    assert type(event) is event_class
    assert event.actor == "bob"
    assert event.request_id == request_id
    assert event.timestamp == LATER
    assert event.originator_id == key.id
    assert event.originator_version == version + 1
    assert key.version == version + 1
    assert key.modified_on == LATER
    assert request_id not in str(vars(key))
    return event


def test_change_details_records_details_changed() -> None:
    key = settled_key()

    event = expect_one_event(
        key,
        lambda k: k.change_details("New name", "New text", **context("r-details")),
        ApiKey.DetailsChanged,
        "r-details",
    )

    assert isinstance(event, ApiKey.DetailsChanged)
    assert (event.display_name, event.description) == (personal("New name"), personal("New text"))
    assert (key.display_name, key.description) == ("New name", "New text")


def test_change_details_carries_only_the_changed_field() -> None:
    key = settled_key()

    event = expect_one_event(
        key,
        lambda k: k.change_details("New name", "for the llama demo", **context("r-name")),
        ApiKey.DetailsChanged,
        "r-name",
    )

    assert isinstance(event, ApiKey.DetailsChanged)
    assert event.display_name == personal("New name")
    assert event.description is None
    assert key.description == "for the llama demo"


def test_attach_records_deployment_attached() -> None:
    key = settled_key()

    event = expect_one_event(
        key,
        lambda k: k.attach(MISTRAL, **context("r-attach")),
        ApiKey.DeploymentAttached,
        "r-attach",
    )

    assert isinstance(event, ApiKey.DeploymentAttached)
    assert event.deployment == MISTRAL
    assert key.deployments == [LLAMA, MISTRAL]


def test_detach_records_deployment_detached() -> None:
    key = settled_key([LLAMA, MISTRAL])

    event = expect_one_event(
        key, lambda k: k.detach(LLAMA, **context("r-detach")), ApiKey.DeploymentDetached, "r-detach"
    )

    assert isinstance(event, ApiKey.DeploymentDetached)
    assert event.deployment == LLAMA
    assert key.deployments == [MISTRAL]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, NOW + timedelta(days=7)),
        (NOW + timedelta(days=7), NOW + timedelta(days=8)),
        (NOW + timedelta(days=7), None),
    ],
    ids=["never-to-moment", "moment-to-moment", "moment-to-never"],
)
def test_change_expiry_records_expiry_changed(
    before: datetime | None, after: datetime | None
) -> None:
    key = settled_key(expire_time=before)

    event = expect_one_event(
        key,
        lambda k: k.change_expiry(after, **context("r-expiry")),
        ApiKey.ExpiryChanged,
        "r-expiry",
    )

    assert isinstance(event, ApiKey.ExpiryChanged)
    assert event.expire_time == after
    assert key.expire_time == after


def test_delete_records_key_deleted_and_sets_delete_time() -> None:
    key = settled_key()

    expect_one_event(key, lambda k: k.delete(**context("r-delete")), ApiKey.KeyDeleted, "r-delete")

    assert key.is_deleted
    assert key.delete_time == LATER


def test_an_update_of_details_and_expiry_records_both_events_in_order() -> None:
    key = settled_key()

    key.change_details("New name", None, **context("r-update"))
    key.change_expiry(NOW + timedelta(days=3), **context("r-update"))
    events = pending(key)

    assert [type(event) for event in events] == [ApiKey.DetailsChanged, ApiKey.ExpiryChanged]
    assert [event.originator_version for event in events] == [2, 3]
    assert {(event.actor, event.request_id, event.timestamp) for event in events} == {
        ("bob", "r-update", LATER)
    }


@pytest.mark.parametrize(
    "command",
    [
        lambda k: k.change_details(None, None, **context("r-same")),
        lambda k: k.change_details("Llama key", None, **context("r-same")),
        lambda k: k.change_details("Llama key", "for the llama demo", **context("r-same")),
        lambda k: k.change_expiry(NOW + timedelta(days=5), **context("r-same")),
    ],
    ids=["details-none", "same-name", "same-name-and-description", "same-expiry"],
)
def test_unchanged_values_record_nothing(command: Command) -> None:
    key = settled_key(expire_time=NOW + timedelta(days=5))

    command(key)

    assert pending(key) == []
    assert key.version == 1


def test_never_expiring_stays_never_expiring_without_an_event() -> None:
    key = settled_key(expire_time=None)

    key.change_expiry(None, **context("r-same"))

    assert pending(key) == []


def test_an_unchanged_expiry_in_the_past_is_not_an_error() -> None:
    key = settled_key(expire_time=NOW + timedelta(minutes=5))

    key.change_expiry(NOW + timedelta(minutes=5), **context("r-same", now=NOW + timedelta(days=1)))

    assert pending(key) == []


# The key's rules


def deleted_key() -> ApiKey:
    key = settled_key([LLAMA])
    key.delete(**context("r-delete"))
    key.collect_events()
    return key


@pytest.mark.parametrize(
    "command",
    [
        lambda k: k.change_details("New name", None, **context("r-late")),
        lambda k: k.change_details("Llama key", None, **context("r-late")),
        lambda k: k.change_expiry(NOW + timedelta(days=2), **context("r-late")),
        lambda k: k.change_expiry(None, **context("r-late")),
        lambda k: k.attach(MISTRAL, **context("r-late")),
        lambda k: k.detach(LLAMA, **context("r-late")),
        lambda k: k.delete(**context("r-late")),
    ],
    ids=[
        "change-details",
        "unchanged-details",
        "change-expiry",
        "unchanged-expiry",
        "attach",
        "detach",
        "delete-again",
    ],
)
def test_a_deleted_key_refuses_every_change(command: Command) -> None:
    key = deleted_key()

    with pytest.raises(KeyIsDeleted):
        command(key)

    assert pending(key) == []
    assert key.version == 2


def test_attaching_an_attached_deployment_is_refused() -> None:
    key = settled_key([LLAMA])

    with pytest.raises(DeploymentAlreadyAttached):
        key.attach(LLAMA, **context("r-attach"))

    assert pending(key) == []
    assert key.deployments == [LLAMA]


def test_detaching_a_deployment_not_attached_is_refused() -> None:
    key = settled_key([LLAMA])

    with pytest.raises(DeploymentNotAttached):
        key.detach(MISTRAL, **context("r-detach"))

    assert pending(key) == []
    assert key.deployments == [LLAMA]


@pytest.mark.parametrize(
    "deployment",
    [FOREIGN, "projects/acme-two/deployments/llama", "projects/acme/models/llama", "llama"],
)
def test_attaching_a_deployment_of_another_project_is_refused(deployment: str) -> None:
    key = settled_key([LLAMA])

    with pytest.raises(DeploymentOfOtherProject):
        key.attach(deployment, **context("r-attach"))

    assert pending(key) == []
    assert key.deployments == [LLAMA]


@pytest.mark.parametrize(
    "expire_time", [LATER, LATER - timedelta(microseconds=1), NOW - timedelta(days=365)]
)
def test_changing_expiry_to_a_moment_not_in_the_future_is_refused(expire_time: datetime) -> None:
    key = settled_key(expire_time=None)

    with pytest.raises(ExpiryNotInFuture):
        key.change_expiry(expire_time, **context("r-expiry", now=LATER))

    assert pending(key) == []
    assert key.expire_time is None


def test_attaching_beyond_the_maximum_of_deployments_is_refused() -> None:
    key = settled_key(deployments(MAX_DEPLOYMENTS - 1))
    key.attach("projects/acme/deployments/the-last", **context("r-100"))
    assert len(key.deployments) == MAX_DEPLOYMENTS
    key.collect_events()

    with pytest.raises(TooManyDeployments):
        key.attach("projects/acme/deployments/one-too-many", **context("r-101"))

    assert pending(key) == []
    assert len(key.deployments) == MAX_DEPLOYMENTS


def test_every_refusal_is_a_domain_error() -> None:
    for error in (
        KeyIsDeleted,
        DeploymentAlreadyAttached,
        DeploymentNotAttached,
        DeploymentOfOtherProject,
        ExpiryNotInFuture,
        TooManyDeployments,
        KeyNotDeleted,
        AlreadyPurged,
    ):
        assert issubclass(error, DomainError)


# Purging a deleted key's personal data


def test_purge_records_personal_data_purged_with_actor_and_request_id() -> None:
    key = deleted_key()

    event = expect_one_event(
        key,
        lambda k: k.purge_personal_data(**context("r-purge")),
        ApiKey.PersonalDataPurged,
        "r-purge",
    )

    assert isinstance(event, ApiKey.PersonalDataPurged)
    assert key.version == 3


def test_a_purge_erases_the_name_and_description_and_sets_purge_time() -> None:
    key = deleted_key()

    key.purge_personal_data(**context("r-purge", now=LATER + timedelta(minutes=1)))

    assert (key.display_name, key.description) == ("", "")
    assert (key.personal_name, key.personal_description) == (personal(None), personal(None))
    assert key.purge_time == LATER + timedelta(minutes=1)
    assert key.delete_time == LATER
    # Only the personal data goes: what the key was stays.
    assert key.name == str(NAME)
    assert key.deployments == [LLAMA]
    assert key.secret_sha256 == keyformat.digest(SECRET).hex()


def test_purging_a_key_that_is_not_deleted_is_refused() -> None:
    key = settled_key()

    with pytest.raises(KeyNotDeleted):
        key.purge_personal_data(**context("r-purge"))

    assert pending(key) == []
    assert key.version == 1
    assert key.purge_time is None
    assert (key.display_name, key.description) == ("Llama key", "for the llama demo")


def test_purging_twice_is_refused() -> None:
    key = deleted_key()
    key.purge_personal_data(**context("r-purge"))
    key.collect_events()

    with pytest.raises(AlreadyPurged):
        key.purge_personal_data(**context("r-purge-again", now=LATER + timedelta(days=1)))

    assert pending(key) == []
    assert key.version == 3
    assert key.purge_time == LATER


def test_a_purged_key_is_still_deleted_and_refuses_every_change() -> None:
    key = deleted_key()
    key.purge_personal_data(**context("r-purge"))
    key.collect_events()

    assert key.is_deleted
    commands: list[Command] = [
        lambda k: k.change_details("Back again", None, **context("r-late")),
        lambda k: k.attach(MISTRAL, **context("r-late")),
        lambda k: k.delete(**context("r-late")),
    ]
    for command in commands:
        with pytest.raises(KeyIsDeleted):
            command(key)
    assert pending(key) == []
    assert key.display_name == ""


def test_personal_data_shows_its_text_and_nothing_once_erased() -> None:
    assert personal("Llama key").shown == "Llama key"
    assert personal("").shown == ""
    assert personal(None).shown == ""
    assert personal("Llama key") != personal(None)
    assert PersonalData(ApiKey.id_for(KeyName("acme", "key-two")), "Llama key") != personal(
        "Llama key"
    )


# Stored history


def a_key_with_history() -> ApiKey:
    key = new_key([LLAMA], NOW + timedelta(days=30), request_id="r-1")
    key.change_details("Renamed", "new text", **context("r-2"))
    key.change_expiry(NOW + timedelta(days=60), **context("r-2"))
    key.attach(MISTRAL, **context("r-3"))
    key.detach(LLAMA, **context("r-4"))
    key.delete(**context("r-5", now=LATER + timedelta(minutes=1)))
    return key


def test_replaying_stored_events_rebuilds_the_same_key(app: KeyStore) -> None:
    key = a_key_with_history()
    app.save(key)

    replayed: ApiKey = app.repository.get(KEY_ID)

    assert isinstance(replayed, ApiKey)
    assert replayed.name == key.name == str(NAME)
    assert replayed.display_name == "Renamed"
    assert replayed.description == "new text"
    assert (replayed.personal_name, replayed.personal_description) == (
        personal("Renamed"),
        personal("new text"),
    )
    assert replayed.deployments == key.deployments == [MISTRAL]
    assert replayed.expire_time == key.expire_time == NOW + timedelta(days=60)
    assert replayed.delete_time == key.delete_time == LATER + timedelta(minutes=1)
    assert not any(f"r-{n}" in str(vars(replayed)) for n in range(1, 6))
    assert replayed.secret_sha256 == key.secret_sha256
    assert replayed.secret_hint == key.secret_hint
    assert replayed.version == key.version == 6
    assert replayed.created_on == key.created_on == NOW
    assert replayed.modified_on == key.modified_on
    assert vars(replayed) == vars(key)


def test_replaying_up_to_a_version_gives_the_key_as_it_was(app: KeyStore) -> None:
    app.save(a_key_with_history())

    before_delete: ApiKey = app.repository.get(KEY_ID, version=5)

    assert isinstance(before_delete, ApiKey)
    assert before_delete.version == 5
    assert before_delete.delete_time is None
    assert before_delete.deployments == [MISTRAL]
    as_created: ApiKey = app.repository.get(KEY_ID, version=1)
    assert (as_created.display_name, as_created.description) == ("Llama key", "for the llama demo")


def test_stored_history_never_contains_the_secret(app: KeyStore) -> None:
    app.save(a_key_with_history())

    notifications = app.recorder.select_notifications(start=None, limit=100)

    assert notifications
    assert all(SECRET.encode() not in n.state for n in notifications)


@pytest.mark.parametrize(("cls", "topic"), TOPICS.items(), ids=TOPICS.values())
def test_topics_are_explicit_and_stable(cls: type[Any], topic: str) -> None:
    assert get_topic(cls) == topic
    assert resolve_topic(topic) is cls


def test_every_event_class_of_the_key_declares_its_own_topic() -> None:
    # A nested event class without a TOPIC of its own inherits its base's, and the
    # library then registers that string for the subclass: the topic would no longer
    # resolve to the class that declares it.
    event_classes = {
        name: value
        for name, value in vars(ApiKey).items()
        if isinstance(value, type) and issubclass(value, ApiKey.Event)
    }

    assert {"Event", *(cls.__name__ for cls in TOPICS if cls is not ApiKey)} <= set(event_classes)
    for name, cls in sorted(event_classes.items()):
        assert "TOPIC" in vars(cls), f"ApiKey.{name} inherits the topic {cls.TOPIC!r}"
        assert resolve_topic(cls.TOPIC) is cls, f"{cls.TOPIC!r} resolves to another class"


def test_stored_events_are_recorded_under_their_stable_topics(app: KeyStore) -> None:
    app.save(a_key_with_history())

    notifications = app.recorder.select_notifications(start=None, limit=100)
    created = app.mapper.to_domain_event(notifications[0])

    assert [n.topic for n in notifications] == [
        "edgekeys:KeyCreated",
        "edgekeys:DetailsChanged",
        "edgekeys:ExpiryChanged",
        "edgekeys:DeploymentAttached",
        "edgekeys:DeploymentDetached",
        "edgekeys:KeyDeleted",
    ]
    assert isinstance(created, ApiKey.KeyCreated)
    assert created.originator_topic == "edgekeys:ApiKey"
    assert b"edgekeys:ApiKey" in notifications[0].state


def test_stored_history_holds_names_and_descriptions_only_encrypted(app: KeyStore) -> None:
    app.save(a_key_with_history())

    notifications = app.recorder.select_notifications(start=None, limit=100)
    created = app.mapper.to_domain_event(notifications[0])
    changed = app.mapper.to_domain_event(notifications[1])

    for words in (b"Llama key", b"for the llama demo", b"Renamed", b"new text"):
        assert all(words not in n.state for n in notifications)
    assert isinstance(created, ApiKey.KeyCreated)
    assert (created.display_name, created.description) == (
        personal("Llama key"),
        personal("for the llama demo"),
    )
    assert isinstance(changed, ApiKey.DetailsChanged)
    assert (changed.display_name, changed.description) == (
        personal("Renamed"),
        personal("new text"),
    )


def test_a_stored_purge_replays_with_the_words_erased(app: KeyStore) -> None:
    key = a_key_with_history()
    key.purge_personal_data(**context("r-6", now=LATER + timedelta(minutes=2)))
    app.save(key)

    replayed: ApiKey = app.repository.get(KEY_ID)
    [last] = app.recorder.select_notifications(start=7, limit=1)

    assert last.topic == "edgekeys:PersonalDataPurged"
    assert isinstance(app.mapper.to_domain_event(last), ApiKey.PersonalDataPurged)
    assert replayed.version == 7
    assert (replayed.display_name, replayed.description) == ("", "")
    assert replayed.purge_time == LATER + timedelta(minutes=2)
    assert vars(replayed) == vars(key)
