"""StreamIndex's messages: the validation index, entry by entry, as edge followers are
fed it (digests, never secrets), both ways."""

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from edgekeys.v1 import replication_pb2 as rpb
from projections.index import Change, Entry

HEARTBEAT = 1.0  # seconds between messages on an idle stream
BATCH = 1000  # changes per message
ACTIVE, DELETED = rpb.IndexChange.STATE_ACTIVE, rpb.IndexChange.STATE_DELETED


def snapshot_messages(position: int, entries: Sequence[Entry]) -> Iterator[rpb.StreamIndexResponse]:
    """Built one message at a time: the event loop serves requests in between."""
    starts = range(0, len(entries), BATCH) or range(1)
    for start in starts:
        batch = entries[start : start + BATCH]
        yield rpb.StreamIndexResponse(
            reset=start == 0,
            changes=[to_message(Change(position, e, False)) for e in batch],
            position=position,
            snapshot_complete=start == starts[-1],
        )


def change_messages(position: int, changes: Sequence[Change]) -> Iterator[rpb.StreamIndexResponse]:
    if not changes:
        yield rpb.StreamIndexResponse(position=position)
    for start in range(0, len(changes), BATCH):
        batch = changes[start : start + BATCH]
        last = start + BATCH >= len(changes)
        # A follower cut off mid-way resumes after the last change it received:
        # changes come oldest first, so it has every change up to there.
        yield rpb.StreamIndexResponse(
            changes=[to_message(change) for change in batch],
            position=position if last else batch[-1].position,
        )


def to_message(change: Change) -> rpb.IndexChange:
    entry = change.entry
    if change.deleted:
        return rpb.IndexChange(position=change.position, api_key=entry.name, state=DELETED)
    sent = rpb.IndexChange(
        position=change.position,
        api_key=entry.name,
        secret_sha256=entry.digest,
        deployments=sorted(entry.deployments),
        state=ACTIVE,
    )
    if entry.expire_time is not None:
        sent.expire_time.FromDatetime(entry.expire_time)
    if entry.previous_until is not None:
        sent.previous_secret_sha256 = entry.previous
        sent.previous_secret_expire_time.FromDatetime(entry.previous_until)
    return sent


def to_entry(change: rpb.IndexChange) -> Entry:
    def moment(field: str) -> datetime | None:
        return getattr(change, field).ToDatetime(tzinfo=UTC) if change.HasField(field) else None

    return Entry(
        change.secret_sha256,
        change.api_key,
        frozenset(change.deployments),
        moment("expire_time"),
        change.previous_secret_sha256,
        moment("previous_secret_expire_time"),
    )
