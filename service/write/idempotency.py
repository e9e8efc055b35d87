"""Request ids (AIP-155): a `request_id` names one request, whatever key it touches.

Each request that carries an id leaves a record — the id, the method, a fingerprint of
the request's other fields, and the key — written in the same transaction as the events
the request recorded (see `service.storage.recorders.Side`), so a record exists exactly when its
request took effect. The same id again with the same request is a retry: nothing new is
applied. The same id with another method, other fields or another key is refused
(`RequestIdReused`), for creates too. Records are kept for `RETENTION`; older ones are
deleted as writes go on, so storage stays bounded by a day of writes, and nothing of
this lives in the aggregate or its snapshots.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from service.storage.database import create_tables
from service.storage.recorders import Side

RETENTION = timedelta(hours=24)
SWEEP_EVERY = timedelta(minutes=1)  # of the clock: how often expired records go
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

metadata = sa.MetaData()
records = sa.Table(
    "request_ids",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("method", sa.String(40), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("api_key", sa.String(200), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),  # µs since the epoch, UTC
    sa.Index("request_ids_by_time", "create_time"),
)


@dataclass(frozen=True)
class Request:
    """What names a request: its id (empty: none), its method, and a fingerprint of
    every other field it carries."""

    id: str = ""
    method: str = ""
    fingerprint: str = ""


NO_REQUEST = Request()


class RequestIdReused(Exception):
    """The request id was used, within a day, by a different request."""

    def __init__(self, request_id: str, method: str, key: str) -> None:
        super().__init__(
            f"request_id {request_id} was used within the last 24 hours by another request "
            f"({method} on {key}): use a new UUID for each request, the same one only to "
            "retry that very request"
        )


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


class RequestLog:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_tables(engine, metadata)
        self._swept: datetime | None = None

    def applied(self, request: Request, key: str, now: datetime) -> bool:
        """Whether `request` took effect already (then nothing is to be done again);
        RequestIdReused when its id names another request."""
        if not request.id:
            return False
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(records.c.method, records.c.fingerprint, records.c.api_key).where(
                    records.c.request_id == request.id,
                    records.c.create_time >= _micros(now - RETENTION),
                )
            ).first()
        if found is None:
            return False
        if tuple(found) != (request.method, request.fingerprint, key):
            raise RequestIdReused(request.id, found.method, found.api_key)
        return True

    def record(self, request: Request, key: str, now: datetime) -> list[Side]:
        """The statements that record `request` in its events' transaction (none for a
        request without an id), and, once a minute, forget expired records. A live
        record of the same id makes the transaction fail (IntegrityError): a race
        with another attempt of the same id, which the caller then reads back."""
        if not request.id:
            return []
        cutoff = _micros(now - RETENTION)
        sides = [
            Side(
                "DELETE FROM request_ids WHERE request_id = ? AND create_time < ?",
                (request.id, cutoff),
            ),
            Side(
                "INSERT INTO request_ids (request_id, method, fingerprint, api_key, create_time) "
                "VALUES (?, ?, ?, ?, ?)",
                (request.id, request.method, request.fingerprint, key, _micros(now)),
            ),
        ]
        if self._swept is None or now - self._swept >= SWEEP_EVERY:
            self._swept = now
            sides.append(Side("DELETE FROM request_ids WHERE create_time < ?", (cutoff,)))
        return sides
