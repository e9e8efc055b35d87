"""Run as `python -m tests.e2e.purge_server DATABASE_URL PORT POINT VICTIM`: a real
edgekeys server on 127.0.0.1:PORT that SIGKILLs itself at POINT of the purge of the key
named VICTIM (and of no other key): each point is one step of a purge."""

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from projections import catalog
from projections.audit_log import AuditLog
from projections.projector import Projector
from service.domain.api_key import ApiKey
from service.runtime.config import Settings
from service.runtime.server import Server
from service.storage import recorders
from service.write.keystore import KeyStore

VICTIM = ApiKey.id_for(sys.argv[4]) if len(sys.argv) > 4 else UUID(int=0)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def purges_victim(events: Sequence[Any]) -> bool:
    return any(
        isinstance(e, ApiKey.PersonalDataPurged) and e.originator_id == VICTIM for e in events
    )


def in_transaction(original: Callable[..., Any]) -> Callable[..., Any]:
    """The purge's statements run, its transaction not committed."""

    def insert(self: Any, cursor: Any, stored_events: Any, **kwargs: Any) -> Any:
        result = original(self, cursor, stored_events, **kwargs)
        # The purge's own statement (a create's data key, also a side, names VICTIM too).
        if any(
            side.sql.startswith("DELETE FROM personal_data_keys") and VICTIM.hex in side.params
            for side in kwargs.get("side", ())
        ):
            die()
        return result

    return insert


def after_commit(self: KeyStore, *objects: Any, **kwargs: Any) -> Any:
    recordings = SAVE(self, *objects, **kwargs)
    if purges_victim([r.domain_event for r in recordings]):
        die()
    return recordings


def in_catalog_transaction(fold: Any, conn: Any) -> None:
    WRITE(fold, conn)  # the batch's rows written, its transaction not committed
    if purges_victim([event for _, event in fold.events]):
        die()


def before_audit(self: AuditLog, rows: Any) -> None:
    rows = list(rows)
    if purges_victim([event for _, event in rows]):
        die()
    LOG(self, rows)


def before_wal(self: Projector, events: Any) -> None:
    if purges_victim([event for _, event in events]):
        die()
    FORGET(self, events)


def kill_in_transaction() -> None:
    for recorder in (recorders.SQLiteRecorder, recorders.PostgresRecorder):
        recorder._insert_events = in_transaction(recorder._insert_events)  # type: ignore[method-assign]


SAVE, WRITE, LOG, FORGET = (
    KeyStore.save,
    catalog._Fold.write,
    AuditLog.process,
    Projector._forget_purged,
)
POINTS: dict[str, Callable[[], None]] = {
    "inside the purge's transaction": kill_in_transaction,
    "after the purge's commit": lambda: setattr(KeyStore, "save", after_commit),
    "inside the catalog's transaction": lambda: setattr(
        catalog._Fold, "write", in_catalog_transaction
    ),
    "between the catalog and the audit log": lambda: setattr(AuditLog, "process", before_audit),
    "before the WAL is emptied": lambda: setattr(Projector, "_forget_purged", before_wal),
}


async def main(database_url: str, port: str, point: str) -> None:
    POINTS[point]()
    settings = Settings(
        address=f"127.0.0.1:{port}",
        database_url=database_url,
        http_address="off",
        encryption_key=os.environ.get("EDGEKEYS_ENCRYPTION_KEY", ""),
    )
    server = Server(settings)
    await server.start()
    await server.wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
