"""`edgekeys store copy`: every event of one store into a new, empty one, in order,
encrypted with the target's key (or none). This is how encryption at rest is brought
to an existing store, and how its key is changed.

Events are copied as stored bytes, unwrapped from the source's cipher and wrapped in
the target's: nothing is decoded, so personal data stays sealed under its data key,
and the data keys are copied too (re-sealed). Snapshots are not copied: the target
takes them again as keys change. The target's catalog and audit log are built from its
events when edgekeys first starts on it.
"""

from collections.abc import Callable

from eventsourcing.persistence import Cipher, StoredEvent

from service.write.keystore import KeyStore

BATCH = 1000  # events per transaction (the Postgres recorder's pipeline wants few)


def copy_store(
    source: KeyStore, target: KeyStore, progress: Callable[[int, int], None]
) -> tuple[int, int]:
    """Copy `source` into the empty `target`. Returns (events, data keys) copied;
    `progress(copied, total)` is called after each batch."""
    if target.recorder.max_notification_id():
        raise ValueError("the target store is not empty")
    data_keys = 0
    for owner, data_key in source.data_keys.all():
        target.data_keys.put(owner, data_key)
        data_keys += 1
    total = source.recorder.max_notification_id() or 0
    unwrap, wrap = source.mapper.cipher, target.mapper.cipher
    copied, after = 0, 0
    while rows := source.recorder.select_notifications(
        start=after, limit=BATCH, inclusive_of_start=False
    ):
        target.recorder.insert_events(
            [
                StoredEvent(
                    originator_id=row.originator_id,
                    originator_version=row.originator_version,
                    topic=row.topic,
                    state=_rewrapped(row.state, unwrap, wrap),
                )
                for row in rows
            ]
        )
        copied += len(rows)
        after = rows[-1].id
        progress(copied, total)
    return copied, data_keys


def _rewrapped(state: bytes, unwrap: Cipher | None, wrap: Cipher | None) -> bytes:
    if unwrap is not None:
        state = unwrap.decrypt(state)
    if wrap is not None:
        state = wrap.encrypt(state)
    return state
