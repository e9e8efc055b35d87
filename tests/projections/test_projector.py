"""projections/projector.py over a real KeyStore: catching up, and starting again."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgekeys.v1.validation_pb2 import (
    VERDICT_ALLOWED,
    VERDICT_DEPLOYMENT_NOT_ALLOWED,
    VERDICT_EXPIRED,
    VERDICT_NOT_FOUND,
)
from projections import catalog as catalog_module
from projections import projector as projector_module
from projections.catalog import Catalog
from projections.index import ValidationIndex
from projections.projector import Projector
from service.application import KeyStore
from service.domain import ApiKey
from service.names import KeyName
from tests.conftest import FakeClock

LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"


@dataclass
class Replica:
    """One process's view: the store, and the projections a Projector keeps."""

    store: KeyStore
    engine: Engine
    index: ValidationIndex
    catalog: Catalog
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
        self.store_url = f"sqlite:///{tmp_path / 'store.db'}"
        self.catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
        self.clock = clock
        self.opened: list[Replica] = []

    def start(self) -> Replica:
        """What a process does when it starts: open both databases, project nothing yet."""
        store = KeyStore(self.store_url, self.clock)
        engine = sa.create_engine(self.catalog_url)
        index = ValidationIndex()
        catalog = Catalog(engine)
        replica = Replica(store, engine, index, catalog, Projector(store, index, catalog))
        self.opened.append(replica)
        return replica


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
    apply = catalog_module._apply

    def recording(conn: Connection, position: int, event: ApiKey.Event) -> None:
        positions.append(position)
        apply(conn, position, event)

    monkeypatch.setattr(catalog_module, "_apply", recording)
    return positions


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
    assert replica.index.position == replica.catalog.position == 4
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

    assert replica.catalog.position == 5
    assert len(replica.index) == 5
    assert all(replica.index.check(s, LLAMA, clock())[0] == VERDICT_ALLOWED for s in secrets)
    assert len(replica.catalog.list("acme", after=0, limit=10)) == 5


def test_catching_up_twice_applies_nothing_twice(replica: Replica, applied: list[int]) -> None:
    replica.store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    replica.store.attach_deployment(key_name("key-one"), MISTRAL)

    replica.projector.catch_up()
    replica.projector.catch_up()

    assert applied == [1, 2]
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
    files: Files, replica: Replica, applied: list[int]
) -> None:
    replica.store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    replica.projector.catch_up()
    # Written by another process while this one was down: this catalog never saw it.
    replica.store.create_key("acme", "key-two", "two", "", [LLAMA], None)
    replica.store.attach_deployment(key_name("key-one"), MISTRAL)
    replica.close()
    applied.clear()

    restarted = files.start()
    assert restarted.catalog.position == 1

    assert restarted.projector.catch_up() == 3

    assert applied == [2, 3]
    assert restarted.catalog.position == 3
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
    files: Files, tmp_path: Path, clock: FakeClock
) -> None:
    store = KeyStore(files.store_url, clock)
    index = RecordingIndex()
    first_engine = sa.create_engine(f"sqlite:///{tmp_path / 'first.db'}")
    store.create_key("acme", "key-one", "one", "", [LLAMA], None)
    store.attach_deployment(key_name("key-one"), MISTRAL)
    Projector(store, index, Catalog(first_engine)).catch_up()
    assert index.applied == [1, 2]
    rebuilt_engine = sa.create_engine(f"sqlite:///{tmp_path / 'rebuilt.db'}")
    rebuilt = Catalog(rebuilt_engine)

    try:
        assert Projector(store, index, rebuilt).catch_up() == 2

        assert index.applied == [1, 2]
        [record] = rebuilt.list("acme", after=0, limit=10)
        assert record.deployments == [LLAMA, MISTRAL]
        assert rebuilt.position == 2
    finally:
        store.close()
        first_engine.dispose()
        rebuilt_engine.dispose()
