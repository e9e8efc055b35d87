"""Run as `python -m tests.e2e.kill_after_commit DATABASE_URL POINT`: one key created
through the server's own write path, then a second whose process is SIGKILLed at POINT,
after the event's commit and before the projections have all committed it."""

import asyncio
import os
import signal
import sys
from typing import Any

from projections import catalog
from projections.audit_log import AuditLog
from projections.projector import Projector
from service.runtime.config import Settings
from service.runtime.server import Server
from tests.e2e.conftest import LLAMA


def die(*args: Any, **kwargs: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def catalog_rows_then_die(self: Any, conn: Any) -> None:
    """The catalog's rows written, its transaction not yet committed."""
    written(self, conn)
    die()


written = catalog._Fold.write
POINTS: dict[str, tuple[type, str, Any]] = {
    "before the projections": (Projector, "catch_up", die),
    "inside the catalog's transaction": (catalog._Fold, "write", catalog_rows_then_die),
    "between the catalog and the audit log": (AuditLog, "process", die),
}


async def main(database_url: str, point: str) -> None:
    server = Server(Settings(address="127.0.0.1:0", database_url=database_url, http_address="off"))
    await server.store.writer.run(
        server.store.keys.create_key, "acme", "before-crash", "a", "", [LLAMA], None
    )
    cls, method, replacement = POINTS[point]
    setattr(cls, method, replacement)
    await server.store.writer.run(
        server.store.keys.create_key, "acme", "the-crash", "b", "", [LLAMA], None
    )
    raise AssertionError("not killed")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
