"""projections/projector.py over a real KeyStore: catching up, starting again, the
audit log, purged personal data (service/personal_data.py) and rows altered outside
edgekeys."""

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from eventsourcing.persistence import Notification
from sqlalchemy.engine import Connection, Engine

from edgekeys.v1.validation_pb2 import (
    VERDICT_ALLOWED,
    VERDICT_DEPLOYMENT_NOT_ALLOWED,
    VERDICT_EXPIRED,
    VERDICT_NOT_FOUND,
)
from projections import audit_log as audit_module
from projections import catalog as catalog_module
from projections import projector as projector_module
from projections.audit_log import AuditLog
from projections.catalog import Catalog
from projections.index import ValidationIndex
from projections.projector import Projector
from service.domain.api_key import ApiKey, PersonalData
from service.domain.names import KeyName
from service.security.personal_data import DataKeys, PersonalDataAsCiphertext
from service.storage.database import sql_engine
from service.write.idempotency import Request
from service.write.keystore import KeyStore
from tests.api.test_secrets_at_rest import encodings
from tests.conftest import FakeClock

LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"


@dataclass
class Replica:
    """One process's view: the store, and the projections a Projector keeps."""

    store: KeyStore
    engine: Engine  # of the store's database, which the catalog and audit log share
    index: ValidationIndex
    catalog: Catalog
    audit: AuditLog
    projector: Projector

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()

    @property
    def head(self) -> int:
        head = self.store.recorder.max_notification_id()
        assert head is not None
        return head


class Files:
    def __init__(self, tmp_path: Path, clock: FakeClock) -> None:
        self.directory = tmp_path
        self.store_url = f"sqlite:///{tmp_path / 'store.db'}"
        self.clock = clock
        self.opened: list[Replica] = []

    def start(self) -> Replica:
        """What a process does when it starts: open the store and, beside it in the same
        database as the server keeps them, the catalog and audit log; project nothing yet."""
        store = KeyStore(self.store_url, self.clock)
        engine = sql_engine(self.store_url)
        index = ValidationIndex()
        catalog = Catalog(engine)
        audit = AuditLog(engine, store.events_table)
        projector = store.projector(index, catalog, audit)
        replica = Replica(store, engine, index, catalog, audit, projector)
        self.opened.append(replica)
        return replica

    def contents(self) -> bytes:
        """Every byte of every database file: the databases, their WALs and the rest."""
        files = sorted(self.directory.glob("*.db*"))
        assert {f.name for f in files} >= {"store.db", "store.db-wal"}
        return b"".join(f.read_bytes() for f in files)


@pytest.fixture
def files(tmp_path: Path, clock: FakeClock) -> Iterator[Files]:
    files = Files(tmp_path, clock)
    yield files
    for replica in files.opened:
        replica.close()


@pytest.fixture
def replica(files: Files) -> Replica:
    return files.start()


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The store positions the catalog applies, in order."""
    positions: list[int] = []
    write = catalog_module._Fold.write

    def recording(fold: Any, conn: Connection) -> None:
        positions.extend(position for position, _ in fold.events)
        write(fold, conn)

    monkeypatch.setattr(catalog_module._Fold, "write", recording)
    return positions


@pytest.fixture
def linked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The store positions the audit log links into its chain, in order."""
    positions: list[int] = []
    link = audit_module.link

    def recording(previous: bytes, row: Notification) -> bytes:
        positions.append(row.id)
        return link(previous, row)

    monkeypatch.setattr(audit_module, "link", recording)
    return positions


def request(n: int) -> Request:
    return Request(f"00000000-0000-4000-8000-{n:012d}", "UpdateApiKey", f"fingerprint {n}")


def key_name(key_id: str) -> KeyName:
    return KeyName("acme", key_id)


def test_catch_up_on_an_empty_store_stays_at_zero(replica: Replica) -> None:
    assert replica.projector.catch_up() == 0
    assert replica.index.position == 0
    assert replica.catalog.position == 0


def test_catch_up_brings_index_and_catalog_to_the_store_head(
    replica: Replica, clock: FakeClock
) -> None:
    store = replica.store
    _, first = store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    _, second = store.create_key("acme", "key-two", "two", "", [LLAMA], None)
    store.attach_deployment(key_name("key-one"), MISTRAL)
    store.delete_key(key_name("key-two"))

    reached = replica.projector.catch_up()

    assert reached == replica.head == 4
    assert replica.index.position == replica.catalog.position == replica.audit.position == 4
    assert replica.projector.logged_position == 4
    assert replica.index.check(first, MISTRAL, clock())[0] == VERDICT_ALLOWED
    assert replica.index.check(second, LLAMA, clock())[0] == VERDICT_NOT_FOUND
    listed = replica.catalog.list("acme", after=0, limit=10, show_deleted=True)
    assert [(r.name, r.deployments, r.delete_time is not None) for r in listed] == [
        ("projects/acme/apiKeys/key-one", [LLAMA, MISTRAL], False),
        ("projects/acme/apiKeys/key-two", [LLAMA], True),
    ]


def test_catch_up_picks_up_only_what_was_stored_since(
    replica: Replica, clock: FakeClock, applied: list[int]
) -> None:
    store = replica.store
    _, secret = store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    replica.projector.catch_up()

    clock.advance(minutes=1)
    store.update_key(key_name("key-one"), expire_time=clock() + timedelta(minutes=5))
    store.detach_deployment(key_name("key-one"), LLAMA)
    store.attach_deployment(key_name("key-one"), MISTRAL)

    assert replica.projector.catch_up() == 4
    assert applied == [1, 2, 3, 4]
    assert replica.index.check(secret, LLAMA, clock())[0] == VERDICT_DEPLOYMENT_NOT_ALLOWED
    assert replica.index.check(secret, MISTRAL, clock())[0] == VERDICT_ALLOWED
    assert (
        replica.index.check(secret, MISTRAL, clock() + timedelta(minutes=5))[0] == VERDICT_EXPIRED
    )
    [record] = replica.catalog.list("acme", after=0, limit=10)
    assert record.deployments == [MISTRAL]
    assert record.expire_time == clock() + timedelta(minutes=5)


def test_catch_up_reaches_the_head_across_several_batches(
    replica: Replica, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(projector_module, "BATCH", 2)
    secrets = [
        replica.store.create_key("acme", f"key-{n:02d}", "k", "", [LLAMA], None)[1]
        for n in range(5)
    ]

    assert replica.projector.catch_up() == replica.head == 5

    assert replica.catalog.position == replica.audit.position == 5
    assert len(replica.index) == 5
    assert all(replica.index.check(s, LLAMA, clock())[0] == VERDICT_ALLOWED for s in secrets)
    assert len(replica.catalog.list("acme", after=0, limit=10)) == 5


def test_catching_up_twice_applies_nothing_twice(
    replica: Replica, applied: list[int], linked: list[int]
) -> None:
    replica.store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    replica.store.attach_deployment(key_name("key-one"), MISTRAL)

    replica.projector.catch_up()
    replica.projector.catch_up()

    assert applied == linked == [1, 2]
    [record] = replica.catalog.list("acme", after=0, limit=10)
    assert record.deployments == [LLAMA, MISTRAL]


def test_a_restarted_projector_rebuilds_the_index_and_resumes_the_catalog(
    files: Files, replica: Replica, clock: FakeClock, applied: list[int]
) -> None:
    store = replica.store
    _, kept = store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    _, deleted = store.create_key("acme", "key-two", "two", "", [LLAMA], None)
    store.attach_deployment(key_name("key-one"), MISTRAL)
    store.delete_key(key_name("key-two"))
    replica.projector.catch_up()
    before = replica.catalog.list("acme", after=0, limit=10, show_deleted=True)
    replica.close()
    applied.clear()

    restarted = files.start()
    assert len(restarted.index) == 0
    assert restarted.index.position == 0
    assert restarted.catalog.position == 4

    assert restarted.projector.catch_up() == 4

    assert applied == []  # the catalog had all of it already
    assert restarted.catalog.list("acme", after=0, limit=10, show_deleted=True) == before
    assert restarted.index.position == 4
    assert len(restarted.index) == 1
    assert restarted.index.check(kept, MISTRAL, clock())[0] == VERDICT_ALLOWED
    assert restarted.index.check(kept, LLAMA, clock())[0] == VERDICT_ALLOWED
    assert restarted.index.check(deleted, LLAMA, clock())[0] == VERDICT_NOT_FOUND


def test_after_a_restart_new_events_reach_both_projections_once(
    files: Files, replica: Replica, clock: FakeClock, applied: list[int]
) -> None:
    replica.store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    replica.projector.catch_up()
    replica.close()
    restarted = files.start()
    restarted.projector.catch_up()
    applied.clear()

    _, secret = restarted.store.create_key("acme", "key-two", "two", "", [MISTRAL], None)
    restarted.store.update_key(key_name("key-one"), display_name="renamed")

    assert restarted.projector.catch_up() == 3
    assert applied == [2, 3]
    assert restarted.index.check(secret, MISTRAL, clock())[0] == VERDICT_ALLOWED
    listed = restarted.catalog.list("acme", after=0, limit=10)
    assert [(r.name, r.display_name, r.version) for r in listed] == [
        ("projects/acme/apiKeys/key-one", "renamed", 2),
        ("projects/acme/apiKeys/key-two", "two", 1),
    ]


def test_a_restart_with_the_catalog_behind_brings_it_up_to_the_head(
    files: Files, replica: Replica, applied: list[int], linked: list[int]
) -> None:
    replica.store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    replica.projector.catch_up()
    # Written by another process while this one was down: this catalog never saw it.
    replica.store.create_key("acme", "key-two", "two", "", [LLAMA], None)
    replica.store.attach_deployment(key_name("key-one"), MISTRAL)
    replica.close()
    applied.clear()
    linked.clear()

    restarted = files.start()
    assert restarted.catalog.position == restarted.projector.logged_position == 1

    assert restarted.projector.catch_up() == 3

    assert applied == linked == [2, 3]
    assert restarted.catalog.position == restarted.audit.position == 3
    assert restarted.audit.verify().ok
    listed = restarted.catalog.list("acme", after=0, limit=10)
    assert [(r.name, r.deployments) for r in listed] == [
        ("projects/acme/apiKeys/key-one", [LLAMA, MISTRAL]),
        ("projects/acme/apiKeys/key-two", [LLAMA]),
    ]


class RecordingIndex(ValidationIndex):
    """A ValidationIndex that remembers which store positions it was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[int] = []

    def apply(self, position: int, event: ApiKey.Event) -> None:
        self.applied.append(position)
        super().apply(position, event)


def test_a_catalog_rebuilt_from_scratch_does_not_feed_the_index_again(
    files: Files, tmp_path: Path, clock: FakeClock, linked: list[int]
) -> None:
    store = KeyStore(files.store_url, clock)
    index = RecordingIndex()
    store_engine = sql_engine(files.store_url)
    audit = AuditLog(store_engine, store.events_table)
    first_engine = sa.create_engine(f"sqlite:///{tmp_path / 'first.db'}")
    store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    store.attach_deployment(key_name("key-one"), MISTRAL)
    store.projector(index, Catalog(first_engine), audit).catch_up()
    assert index.applied == linked == [1, 2]
    rebuilt_engine = sa.create_engine(f"sqlite:///{tmp_path / 'rebuilt.db'}")
    rebuilt = Catalog(rebuilt_engine)

    try:
        assert store.projector(index, rebuilt, audit).catch_up() == 2

        assert index.applied == linked == [1, 2]
        [record] = rebuilt.list("acme", after=0, limit=10)
        assert record.deployments == [LLAMA, MISTRAL]
        assert rebuilt.position == 2
    finally:
        store.close()
        store_engine.dispose()
        first_engine.dispose()
        rebuilt_engine.dispose()


# The audit log


def logged(audit: AuditLog) -> list[tuple[int, str, int, str]]:
    return [
        (entry.position, entry.api_key, entry.version, entry.event_type)
        for entry, _ in audit.entries()
    ]


def test_catch_up_links_every_stored_event_into_the_audit_log_in_store_order(
    replica: Replica, linked: list[int]
) -> None:
    store = replica.store
    store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    store.create_key("acme", "key-two", "two", "", [LLAMA], None)
    store.attach_deployment(key_name("key-one"), MISTRAL)
    store.delete_key(key_name("key-two"))
    store.purge_key(key_name("key-two"))

    assert replica.projector.catch_up() == replica.head == 5

    assert linked == [1, 2, 3, 4, 5]
    assert replica.audit.position == replica.projector.logged_position == 5
    one, two = "projects/acme/apiKeys/key-one", "projects/acme/apiKeys/key-two"
    assert logged(replica.audit) == [
        (1, one, 1, "KeyCreated"),
        (2, two, 1, "KeyCreated"),
        (3, one, 2, "DeploymentAttached"),
        (4, two, 2, "KeyDeleted"),
        (5, two, 3, "PersonalDataPurged"),
    ]
    verification = replica.audit.verify()
    assert verification.ok, verification.problem
    assert verification.events_checked == verification.head_position == 5
    assert verification.head_link == replica.audit.entries()[-1][0].link


def test_a_restarted_projector_never_links_an_event_again(
    files: Files, replica: Replica, linked: list[int]
) -> None:
    store = replica.store
    store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    store.create_key("acme", "key-two", "two", "", [LLAMA], None)
    store.attach_deployment(key_name("key-one"), MISTRAL)
    replica.projector.catch_up()
    chain = [entry.link for entry, _ in replica.audit.entries()]
    replica.close()
    linked.clear()

    restarted = files.start()
    assert restarted.projector.logged_position == 3
    assert restarted.projector.catch_up() == 3

    assert linked == []
    assert [entry.link for entry, _ in restarted.audit.entries()] == chain

    restarted.store.delete_key(key_name("key-two"))
    restarted.projector.catch_up()
    restarted.projector.catch_up()

    assert linked == [4]
    assert [entry.link for entry, _ in restarted.audit.entries()][:3] == chain
    assert restarted.audit.position == restarted.projector.logged_position == 4
    verification = restarted.audit.verify()
    assert verification.ok, verification.problem
    assert verification.events_checked == 4


# Personal data: stored only encrypted, erased for good by a purge

NAME_WORDS = "Quokka Zebrafish Walrus"
DESCRIPTION_WORDS = "notes on the Xylophone Platypus demo"
RENAMED_WORDS = "Narwhal Axolotl Pangolin"
KEPT_WORDS = "Capybara Okapi Tapir kept"


def edited(text: str) -> str:
    """`text` with the character in its middle replaced (never a no-op edit)."""
    middle = len(text) // 2
    return text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1 :]


def shows_any(contents: bytes, *words: str) -> bool:
    """Whether `contents` hold any of `words` raw, in hex or in base64."""
    return any(form in contents for text in words for form in encodings(text))


def test_a_saved_key_leaves_no_plaintext_personal_data_in_any_database_file(
    files: Files,
) -> None:
    store = KeyStore(files.store_url, files.clock)
    try:
        store.create_key("acme", "key-one", NAME_WORDS, DESCRIPTION_WORDS, [LLAMA], None)
        store.update_key(key_name("key-one"), display_name=RENAMED_WORDS)
        key = store.get_key(key_name("key-one"))

        contents = files.contents()
    finally:
        store.close()

    assert (key.display_name, key.description) == (RENAMED_WORDS, DESCRIPTION_WORDS)
    # The scan does see what is stored: the key's name and the encrypted words' owner.
    assert b"projects/acme/apiKeys/key-one" in contents
    assert key.id.hex.encode() in contents
    assert not shows_any(contents, NAME_WORDS, DESCRIPTION_WORDS, RENAMED_WORDS)


def events_of(store: KeyStore, key_id: str) -> list[ApiKey.Event]:
    owner = ApiKey.id_for(key_name(key_id))
    rows = store.recorder.select_notifications(start=None, limit=1000)
    events = [store.mapper.to_domain_event(row) for row in rows if row.originator_id == owner]
    assert all(isinstance(event, ApiKey.Event) for event in events)
    return [event for event in events if isinstance(event, ApiKey.Event)]


def data_key_owners(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {owner for (owner,) in conn.exec_driver_sql("SELECT owner FROM personal_data_keys")}


def purge(replica: Replica, key_id: str) -> None:
    replica.store.delete_key(key_name(key_id))
    replica.store.purge_key(key_name(key_id))
    replica.projector.catch_up()


def test_a_purged_key_replays_with_its_personal_data_erased_in_every_version(
    files: Files, replica: Replica
) -> None:
    store = replica.store
    store.create_key("acme", "key-one", NAME_WORDS, DESCRIPTION_WORDS, [LLAMA], None)
    store.update_key(key_name("key-one"), display_name=RENAMED_WORDS)
    store.create_key("acme", "key-two", KEPT_WORDS, KEPT_WORDS, [LLAMA], None)
    replica.projector.catch_up()
    owner = ApiKey.id_for(key_name("key-one"))

    purge(replica, "key-one")

    assert store.data_keys.find(owner) is None
    assert data_key_owners(replica.engine) == {ApiKey.id_for(key_name("key-two")).hex}
    for replayed in (store, files.start().store):  # this process, and one with no cache
        key = replayed.get_key(key_name("key-one"))
        assert (key.display_name, key.description) == ("", "")
        assert key.purge_time is not None
        assert key.is_deleted
        assert key.version == 4
        for version in (1, 2, 3):
            earlier = replayed.get_key(key_name("key-one"), version=version)
            assert (earlier.display_name, earlier.description) == ("", "")
        created, renamed, *_ = events_of(replayed, "key-one")
        assert isinstance(created, ApiKey.KeyCreated)
        assert (created.display_name, created.description) == (
            PersonalData(owner, None),
            PersonalData(owner, None),
        )
        assert isinstance(renamed, ApiKey.DetailsChanged)
        assert renamed.display_name == PersonalData(owner, None)
        kept = replayed.get_key(key_name("key-two"))
        assert (kept.display_name, kept.description) == (KEPT_WORDS, KEPT_WORDS)
    [record, kept_record] = replica.catalog.list("acme", after=0, limit=10, show_deleted=True)
    assert (record.display_name, record.description) == ("", "")
    assert record.purge_time == store.get_key(key_name("key-one")).purge_time
    assert kept_record.display_name == KEPT_WORDS
    # The events' bytes never changed: the chain still verifies.
    verification = replica.audit.verify()
    assert verification.ok, verification.problem
    assert verification.events_checked == replica.head


def test_a_restarted_projector_destroys_the_data_key_again_without_harm(
    files: Files, replica: Replica
) -> None:
    replica.store.create_key("acme", "key-one", NAME_WORDS, DESCRIPTION_WORDS, [LLAMA], None)
    purge(replica, "key-one")
    replica.close()

    restarted = files.start()

    assert restarted.projector.catch_up() == 3
    assert restarted.store.get_key(key_name("key-one")).display_name == ""
    assert data_key_owners(restarted.engine) == set()


def test_after_a_purge_no_database_file_holds_the_purged_words(
    files: Files, replica: Replica
) -> None:
    replica.store.create_key("acme", "key-one", NAME_WORDS, DESCRIPTION_WORDS, [LLAMA], None)
    replica.store.create_key("acme", "key-two", KEPT_WORDS, "", [LLAMA], None)
    replica.projector.catch_up()
    # The scan sees what the catalog keeps for ListApiKeys until the purge.
    assert shows_any(files.contents(), NAME_WORDS)

    purge(replica, "key-one")

    contents = files.contents()
    assert not shows_any(contents, NAME_WORDS, DESCRIPTION_WORDS)
    assert shows_any(contents, KEPT_WORDS)


def snapshot_states(store: KeyStore, key_id: str) -> list[bytes]:
    assert store.snapshots is not None
    owner = ApiKey.id_for(key_name(key_id))
    return [snapshot.state for snapshot in store.snapshots.recorder.select_events(owner)]


def test_snapshots_hold_personal_data_only_encrypted_and_replay_erased_after_a_purge(
    files: Files, replica: Replica
) -> None:
    store = replica.store
    store.create_key(
        "acme", "key-one", NAME_WORDS, DESCRIPTION_WORDS, [LLAMA], None, request=request(0)
    )
    for n in range(1, 105):
        store.update_key(
            key_name("key-one"), description=f"{DESCRIPTION_WORDS} {n:03d}", request=request(n)
        )
    [snapshot] = snapshot_states(store, "key-one")
    at_100 = store.get_key(key_name("key-one"), version=100)
    assert at_100.description == f"{DESCRIPTION_WORDS} 099"
    assert request(99).id.encode() not in snapshot  # request ids are kept apart, for a day
    assert not shows_any(snapshot, NAME_WORDS, f"{DESCRIPTION_WORDS} 099")

    purge(replica, "key-one")

    assert snapshot_states(store, "key-one") == [snapshot]  # the purge changed no stored bytes
    for version in (100, 104, None):
        key = store.get_key(key_name("key-one"), version=version)
        assert (key.display_name, key.description) == ("", "")
    assert store.get_key(key_name("key-one")).version == 107
    assert not shows_any(files.contents(), NAME_WORDS, f"{DESCRIPTION_WORDS} 099")


def test_a_snapshot_taken_after_the_purge_keeps_the_words_erased(
    files: Files, replica: Replica
) -> None:
    store = replica.store
    store.create_key("acme", "key-one", NAME_WORDS, DESCRIPTION_WORDS, [LLAMA], None)
    for n in range(1, 98):
        store.update_key(key_name("key-one"), description=f"{DESCRIPTION_WORDS} {n:03d}")

    purge(replica, "key-one")  # deleted at version 99, purged at 100: snapshot time

    [snapshot] = snapshot_states(store, "key-one")
    state = json.loads(snapshot)["state"]
    assert [state[field]["_data_"] for field in ("personal_name", "personal_description")] == [
        {"owner": ApiKey.id_for(key_name("key-one")).hex, "sealed": None}
    ] * 2
    assert not shows_any(snapshot, NAME_WORDS, f"{DESCRIPTION_WORDS} 097")
    key = store.get_key(key_name("key-one"))
    assert (key.version, key.display_name, key.description) == (100, "", "")
    assert key.purge_time is not None


def test_personal_data_cannot_be_read_once_tampered_with_or_moved_to_another_key(
    files: Files,
) -> None:
    engine = sql_engine(files.store_url)
    try:
        transcoding = PersonalDataAsCiphertext(DataKeys(engine))
        owner, other = ApiKey.id_for(key_name("key-one")), ApiKey.id_for(key_name("key-two"))
        transcoding.encode(PersonalData(other, "their own words"))  # other has a data key too
        sealed = transcoding.encode(PersonalData(owner, NAME_WORDS))
        text = sealed["sealed"]
        assert text is not None

        assert transcoding.decode(sealed) == PersonalData(owner, NAME_WORDS)
        with pytest.raises(ValueError, match="fails authentication"):
            transcoding.decode({**sealed, "sealed": edited(text)})
        with pytest.raises(ValueError, match="fails authentication"):
            transcoding.decode({**sealed, "owner": other.hex})
        assert transcoding.decode(transcoding.encode(PersonalData(owner, None))) == PersonalData(
            owner, None
        )
        transcoding.data_keys.destroy_purged([owner])
        assert transcoding.decode(sealed) == PersonalData(owner, None)
    finally:
        engine.dispose()


# Rows altered outside edgekeys


def alter_personal_data(replica: Replica, position: int) -> None:
    """Change one character of the encrypted display name stored at `position`, the way
    someone editing the database by hand would."""
    row = sa.text(f"SELECT state FROM {replica.store.events_table} WHERE rowid = :position")
    with replica.engine.begin() as conn:
        state = json.loads(conn.execute(row, {"position": position}).scalar_one())
        sealed = state["display_name"]["_data_"]
        sealed["sealed"] = edited(sealed["sealed"])
        conn.execute(
            sa.text(
                f"UPDATE {replica.store.events_table} SET state = :state WHERE rowid = :position"
            ),
            {"state": json.dumps(state).encode(), "position": position},
        )


def test_a_row_that_no_longer_decodes_is_logged_and_skipped_and_the_rest_projected(
    replica: Replica, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = replica.store
    _, first = store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    _, altered = store.create_key("acme", "key-two", "two", "", [LLAMA], None)
    _, third = store.create_key("acme", "key-three", "three", "", [LLAMA], None)
    alter_personal_data(replica, 2)

    with caplog.at_level(logging.ERROR, logger=projector_module.__name__):
        assert replica.projector.catch_up() == 3

    assert "position 2 cannot be decoded" in caplog.text
    assert replica.catalog.position == replica.audit.position == 3
    verdicts = [replica.index.check(s, LLAMA, clock())[0] for s in (first, altered, third)]
    assert verdicts == [VERDICT_ALLOWED, VERDICT_NOT_FOUND, VERDICT_ALLOWED]
    assert [r.name for r in replica.catalog.list("acme", after=0, limit=10)] == [
        "projects/acme/apiKeys/key-one",
        "projects/acme/apiKeys/key-three",
    ]
    assert replica.audit.verify().first_bad_position == 2


def test_later_events_of_a_key_whose_creation_no_longer_decodes_stop_no_projection(
    files: Files, replica: Replica, clock: FakeClock
) -> None:
    store = replica.store
    _, first = store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    store.create_key("acme", "key-two", "two", "", [LLAMA], None)
    store.update_key(key_name("key-two"), display_name="renamed")
    store.attach_deployment(key_name("key-two"), MISTRAL)
    store.delete_key(key_name("key-two"))
    _, last = store.create_key("acme", "key-three", "three", "", [LLAMA], None)
    alter_personal_data(replica, 2)
    replica.close()

    restarted = files.start()  # as a server restarted on the altered store

    assert restarted.projector.catch_up() == 6
    assert restarted.index.check(first, LLAMA, clock())[0] == VERDICT_ALLOWED
    assert restarted.index.check(last, LLAMA, clock())[0] == VERDICT_ALLOWED
    assert restarted.catalog.position == restarted.audit.position == 6
    assert [r.name for r in restarted.catalog.list("acme", after=0, limit=10)] == [
        "projects/acme/apiKeys/key-one",
        "projects/acme/apiKeys/key-three",
    ]
    assert restarted.audit.verify().first_bad_position == 2


def test_an_index_loaded_from_the_catalog_equals_one_replayed_from_the_store(
    files: Files, replica: Replica, clock: FakeClock
) -> None:
    store = replica.store
    secrets = {}
    for i in range(6):
        deployments = [LLAMA] if i % 2 else [LLAMA, MISTRAL]
        key, secret = store.create_key("acme", f"key-{i}", "k", "", deployments, None)
        secrets[key.name] = secret
    store.detach_deployment(key_name("key-0"), MISTRAL)
    store.attach_deployment(key_name("key-1"), MISTRAL)
    store.update_key(key_name("key-2"), expire_time=clock() + timedelta(minutes=5))
    store.delete_key(key_name("key-3"))
    replica.projector.catch_up()
    store.delete_key(key_name("key-4"))  # after the catalog's position: replayed
    store.attach_deployment(key_name("key-5"), MISTRAL)

    started = files.start()
    replayed: list[int] = []
    apply = started.index.apply

    def recording(position: int, event: ApiKey.Event) -> None:
        replayed.append(position)
        apply(position, event)

    started.index.apply = recording  # type: ignore[method-assign]
    started.projector.load_index()
    assert started.index.position == replica.catalog.position == 10
    started.projector.catch_up()

    assert replayed == [11, 12]  # only what the catalog had not folded yet
    # And its journal holds the recent changes, so an edge follower can resume.
    resumed = started.index.changes_after(8)
    assert resumed is not None
    assert [(c.position, c.entry.name.rsplit("/", 1)[1], c.deleted) for c in resumed[1]] == [
        (9, "key-2", False),
        (10, "key-3", True),
        (11, "key-4", True),
        (12, "key-5", False),
    ]
    fresh = files.start()
    fresh.projector.catch_up()  # every event, from the store
    (loaded_at, loaded), (replayed_at, everything) = (
        started.index.snapshot(),
        fresh.index.snapshot(),
    )
    assert loaded_at == replayed_at == 12
    assert sorted(loaded, key=lambda e: e.name) == sorted(everything, key=lambda e: e.name)
    assert len(loaded) == 4
    for moment in (clock(), clock() + timedelta(minutes=6)):
        for secret in secrets.values():
            for deployment in (LLAMA, MISTRAL):
                verdict = started.index.check(secret, deployment, moment)
                assert verdict == fresh.index.check(secret, deployment, moment)


def test_the_audit_log_finds_names_it_no_longer_holds_in_memory(
    replica: Replica, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "NAMES_CACHED", 1)
    store = replica.store
    for i in range(3):
        store.create_key("acme", f"key-{i}", "k", "", [LLAMA], None)
    replica.projector.catch_up()
    for i in range(3):
        store.attach_deployment(key_name(f"key-{i}"), MISTRAL)
    replica.projector.catch_up()

    logged = replica.audit.entries(project="acme")
    assert [e.api_key.rsplit("/", 1)[1] for e, _ in logged] == [
        "key-0",
        "key-1",
        "key-2",
        "key-0",
        "key-1",
        "key-2",
    ]
    assert replica.audit.verify().ok
