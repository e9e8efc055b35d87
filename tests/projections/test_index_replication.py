"""projections/index.py for edge followers: the journal of changes an upstream streams
from, and the entry-by-entry updates a follower's index takes."""

import uuid
from datetime import UTC, datetime
from typing import Any

from edgekeys.v1.validation_pb2 import (
    VERDICT_ALLOWED,
    VERDICT_DEPLOYMENT_NOT_ALLOWED,
    VERDICT_NOT_FOUND,
)
from projections.index import Change, Entry, Journal, ValidationIndex
from service.domain import keyformat
from service.domain.api_key import ApiKey
from service.domain.names import KeyName

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"
CONTEXT: dict[str, Any] = {"actor": "alice", "request_id": "", "now": NOW}


class Store:
    """Feeds the index every event its keys record, at increasing positions."""

    def __init__(self, index: ValidationIndex) -> None:
        self.index = index
        self.position = 0

    def create(self, key_id: str) -> ApiKey:
        secret = keyformat.new_secret()
        key = ApiKey.create(
            KeyName("acme", key_id),
            "a key",
            "",
            [LLAMA],
            None,
            secret_sha256=keyformat.digest(secret).hex(),
            secret_hint=keyformat.hint(secret),
            **CONTEXT,
        )
        self.publish(key)
        return key

    def publish(self, key: ApiKey) -> None:
        for event in key.collect_events():
            assert isinstance(event, ApiKey.Event)
            self.position += 1
            self.index.apply(self.position, event)


def summary(changes: list[Change]) -> list[tuple[int, str, frozenset[str], bool]]:
    return [(c.position, c.entry.name, c.entry.deployments, c.deleted) for c in changes]


def test_changes_after_a_position_come_once_per_key_in_their_latest_state() -> None:
    index = ValidationIndex()
    store = Store(index)
    one = store.create("key-one")  # 1
    two = store.create("key-two")  # 2
    one.attach(MISTRAL, **CONTEXT)
    store.publish(one)  # 3
    two.delete(**CONTEXT)
    store.publish(two)  # 4
    one.detach(LLAMA, **CONTEXT)
    store.publish(one)  # 5

    found = index.changes_after(1)

    assert found is not None
    position, changes = found
    assert position == 5
    assert summary(changes) == [
        (4, two.name, frozenset(), True),  # deleted: its name is all a follower needs
        (5, one.name, frozenset({MISTRAL}), False),
    ]
    assert index.changes_after(5) == (5, [])


def test_a_position_the_journal_forgot_or_beyond_the_index_needs_a_snapshot() -> None:
    index = ValidationIndex(journal=2)
    store = Store(index)
    for number in range(4):
        store.create(f"key-{number:03}")  # positions 1 to 4; the journal keeps 3 and 4

    assert index.changes_after(1) is None
    assert index.changes_after(2) is not None  # 3 and 4 are all that came after 2
    assert index.changes_after(5) is None  # another store's position
    position, entries = index.snapshot()
    assert position == 4
    assert len(entries) == 4


def test_the_journal_is_a_ring_of_the_last_changes_with_whole_key_ids() -> None:
    journal = Journal(3)
    ids = [uuid.uuid4().int | 1 << 127 for _ in range(5)]  # the top bit set: 128 bits kept
    for position, key_id in enumerate(ids, start=10):
        journal.append(position, key_id, f"projects/acme/apiKeys/key-{position}")
    assert list(journal.newest_first()) == [
        (14, ids[4], "projects/acme/apiKeys/key-14"),
        (13, ids[3], "projects/acme/apiKeys/key-13"),
        (12, ids[2], "projects/acme/apiKeys/key-12"),
    ]
    assert journal.start == 11  # complete for every position after it
    journal.clear(20)
    assert (list(journal.newest_first()), journal.start) == ([], 20)


def entry(name: str, secret: str, *deployments: str) -> Entry:
    return Entry(keyformat.digest(secret), name, frozenset(deployments), None)


def test_a_follower_replaces_an_entry_by_name_and_forgets_a_changed_digest() -> None:
    index = ValidationIndex()
    old_secret, new_secret = keyformat.new_secret(), keyformat.new_secret()
    name = "projects/acme/apiKeys/key-one"

    index.put(1, entry(name, old_secret, LLAMA))
    index.put(2, entry(name, new_secret, MISTRAL))

    assert index.check(old_secret, MISTRAL, NOW)[0] == VERDICT_NOT_FOUND
    assert index.check(new_secret, MISTRAL, NOW)[0] == VERDICT_ALLOWED
    assert index.check(new_secret, LLAMA, NOW)[0] == VERDICT_DEPLOYMENT_NOT_ALLOWED
    assert len(index) == 1
    assert index.position == 2

    index.remove(3, name)
    index.remove(4, "projects/acme/apiKeys/never-held")
    assert index.check(new_secret, MISTRAL, NOW)[0] == VERDICT_NOT_FOUND
    assert index.position == 4
    found = index.changes_after(0)
    assert found is not None
    assert [(c.position, c.deleted) for c in found[1]] == [(3, True)]


def test_a_reset_swaps_the_whole_index_and_resumable_positions_start_there() -> None:
    index = ValidationIndex()
    dropped, kept = keyformat.new_secret(), keyformat.new_secret()
    index.put(1, entry("projects/acme/apiKeys/dropped", dropped, LLAMA))

    index.reset(7, [entry("projects/acme/apiKeys/kept", kept, LLAMA)])

    assert index.check(dropped, LLAMA, NOW)[0] == VERDICT_NOT_FOUND
    assert index.check(kept, LLAMA, NOW)[0] == VERDICT_ALLOWED
    assert index.position == 7
    assert index.changes_after(6) is None  # older than the snapshot
    assert index.changes_after(7) == (7, [])
