"""Use cases on API keys: load the aggregate, run the command, save its events.

No transport and no read models here; the gRPC layer calls these methods and
the projections follow the store.
"""

import copy
import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Recording

from projections.audit_log import AuditLog
from projections.catalog import Catalog
from projections.index import ValidationIndex
from projections.projector import Projector
from service.domain import keyformat
from service.domain.api_key import ApiKey
from service.domain.clock import Clock
from service.domain.errors import KeyAlreadyExists, KeyNotFound, StaleEtag
from service.domain.names import KeyName
from service.security import callers, sealing
from service.security.personal_data import DataKeys, PersonalDataAsCiphertext
from service.security.sealing import Sealer
from service.storage.database import exclusive_setup, sql_engine, store_environment
from service.storage.recorders import Side
from service.write.idempotency import NO_REQUEST, Request, RequestLog

ANONYMOUS = callers.ANONYMOUS.name  # the actor when no callers file is configured
UNCHANGED: Final = object()  # "leave the expiry as it is", as opposed to None: "never expires"
CIPHER = "eventsourcing.cryptography:AESCipher"
READABLE_SAMPLE = 5  # events tried at each end of the store before serving it
changes = logging.getLogger("edgekeys.changes")  # one line per event this process stored
log = logging.getLogger(__name__)


class UnreadableStore(ValueError):
    """The store's events do not decode with the encryption key given (or without one)."""


class Conflict(Exception):
    """Another writer (another replica) changed the key first and no etag pins the
    version: try the command again on the fresh key (`service.write.writer` does, after a
    pause, without holding up other writes)."""


class BatchRefused(Exception):
    """A batch's transaction failed on an integrity check (another writer was first,
    or two of its commands cannot both hold): nothing of it was stored, and its commands
    are to run again one by one, each to its own outcome."""


def etag_of(version: int) -> str:
    return str(version)


@dataclass
class _Batch:
    """Commands run together (`KeyStore.batch`): what they saved, not yet stored."""

    events: ProcessingEvent[UUID] = field(default_factory=ProcessingEvent)
    sides: list[Side] = field(default_factory=list)
    keys: dict[UUID, ApiKey] = field(default_factory=dict)  # each as its last save left it
    saves: list[tuple[int, tuple[Any, ...], Request]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)  # once stored


class KeyStore(Application[UUID]):
    """The write side: every method records events or reads one key's history."""

    # A snapshot every 100 versions keeps any revision of a long-lived key a short replay.
    snapshotting_intervals: ClassVar[dict[Any, int]] = {ApiKey: 100}

    def __init__(self, database_url: str, clock: Clock, encryption_key: str = "") -> None:
        environment = store_environment(database_url)  # creates the file's directory
        self.encryption_key = sealing.parse_key(encryption_key) if encryption_key else None
        if self.encryption_key:  # the library's AES-GCM for every event and snapshot
            environment.update(CIPHER_TOPIC=CIPHER, CIPHER_KEY=encryption_key.strip())
        self.engine = sql_engine(database_url)  # for everything kept beside the store
        with exclusive_setup(self.engine):  # the library creates its tables here
            self.data_keys = DataKeys(self.engine, self.sealer("data keys"))
            self.request_log = RequestLog(self.engine)
            super().__init__(env=environment)
        self.clock = clock
        self._local = threading.local()  # .batch: the writer thread's open batch, if any
        self._check_readable()

    def sealer(self, purpose: str) -> Sealer | None:
        """What seals values kept beside the store; None without an encryption key."""
        return Sealer(self.encryption_key, purpose) if self.encryption_key else None

    def _check_readable(self) -> None:
        """Refuse to start on a store that the encryption key (or its absence) cannot
        read, rather than fail at the first request. A few events of each end are
        tried: one altered outside edgekeys is the audit check's to report, not this."""
        head = self.recorder.max_notification_id()
        if not head:
            return
        rows = [
            *self.recorder.select_notifications(start=None, limit=READABLE_SAMPLE),
            *self.recorder.select_notifications(
                start=max(1, head - READABLE_SAMPLE + 1), limit=READABLE_SAMPLE
            ),
        ]
        for row in rows:
            try:
                self.mapper.to_domain_event(row)
            except Exception:
                continue
            return
        raise UnreadableStore(
            "this store's events do not decrypt with the encryption key given: a wrong "
            "key, or a store written without one"
            if self.encryption_key
            else "this store's events are encrypted: give the encryption key they were written with"
        )

    @property
    def events_table(self) -> str:
        """The store's table of events (its row ids are the store positions)."""
        table: str = getattr(self.recorder, "events_table_name")  # noqa: B009
        return table

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(PersonalDataAsCiphertext(self.data_keys))

    def save(
        self, *objects: Any, request: Request = NO_REQUEST, **kwargs: Any
    ) -> list[Recording[UUID]]:
        """Record the objects' new events (with `side` statements, in the same
        transaction); one log line for each event stored, naming the request's method.
        Within `batch`, the events wait for the batch's one transaction."""
        batch = self._open_batch
        if batch is None:
            recordings = super().save(*objects, **kwargs)
            self._log_changes(recordings, [(0, objects, request)])
            return recordings
        batch.saves.append((len(batch.events.events), objects, request))
        batch.events.collect_events(*objects)
        batch.sides.extend(kwargs.get("side", ()))
        for key in objects:
            batch.keys[key.id] = key
        return []

    @property
    def _open_batch(self) -> _Batch | None:
        """The batch this thread is running (`batch`), if any."""
        found: _Batch | None = getattr(self._local, "batch", None)
        return found

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run the commands of this block (on this thread) as one: what they save is
        stored in one transaction when the block ends, and a key one of them saved is
        seen by the next as that save left it. A command that raises saves nothing. If
        the transaction fails on an integrity check, BatchRefused: nothing of the block
        is stored, and the commands are to be run again one by one."""
        batch = self._local.batch = _Batch()
        try:
            yield
        finally:
            self._local.batch = None
        if not batch.events.events:
            return
        batch.events.saved_kwargs["side"] = batch.sides
        try:
            recordings = self._record(batch.events)
        except IntegrityError as error:
            raise BatchRefused(str(error)) from error
        try:  # stored: what follows must not undo that
            self._take_snapshots(batch.events)
        except Exception:
            log.exception("a snapshot after a batch failed; the next one is taken as usual")
        self._notify(recordings)
        self._log_changes(recordings, batch.saves)
        for action in batch.after:
            action()

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        # The data keys of new keys go in the events' own transaction.
        sides = processing_event.saved_kwargs["side"] = [
            *processing_event.saved_kwargs.get("side", ())
        ]
        # A version-1 event stored means the key had no event before it.
        new = {e.originator_id for e in processing_event.events if e.originator_version == 1}
        with self.data_keys.deferred(sides, new):
            return super()._record(processing_event)

    def _after_stored(self, action: Callable[[], None]) -> None:
        """Run `action` once what was saved is stored: now, or at the batch's end."""
        batch = self._open_batch
        if batch is None:
            action()
        else:
            batch.after.append(action)

    def _log_changes(
        self,
        recordings: list[Recording[UUID]],
        saves: list[tuple[int, tuple[Any, ...], Request]],
    ) -> None:
        if not changes.isEnabledFor(logging.INFO):
            return
        ends = [start for start, _, _ in saves[1:]] + [len(recordings)]
        for (start, objects, request), end in zip(saves, ends, strict=True):
            names = {key.id: key.name for key in objects if isinstance(key, ApiKey)}
            for recording in recordings[start:end]:
                event = recording.domain_event
                fields = {
                    "event": type(event).__name__,
                    "key": names.get(event.originator_id, ""),
                    "version": event.originator_version,
                    "caller": getattr(event, "actor", ""),  # the event's actor
                    "method": request.method,
                    "request_id": getattr(event, "request_id", ""),
                    "outcome": "stored",
                    "position": recording.notification.id,
                }
                changes.info("change", extra={"fields": fields})

    def get_key(self, name: KeyName | str, version: int | None = None) -> ApiKey:
        """The key now, or as of `version` (replayed from a snapshot and its events).
        Within `batch`, a copy of the key as the batch's last save of it left it."""
        batch = self._open_batch
        saved = batch.keys.get(ApiKey.id_for(name)) if batch and version is None else None
        if saved is not None:  # a copy: the command that saved it answers with it as it was
            return copy.deepcopy(saved)
        try:
            key: ApiKey = self.repository.get(ApiKey.id_for(name), version=version)
        except AggregateNotFoundError:
            raise KeyNotFound(f"{name} does not exist") from None
        if version is not None and key.version != version:
            raise KeyNotFound(f"{name} has no version {version}; it is at {key.version}")
        return key

    def create_key(
        self,
        project: str,
        key_id: str,
        display_name: str,
        description: str,
        deployments: list[str],
        expire_time: datetime | None,
        *,
        actor: str = ANONYMOUS,
        request: Request = NO_REQUEST,
    ) -> tuple[ApiKey, str]:
        """The new key and its secret; for a retried request, the key and no secret."""
        name = KeyName(project, key_id or _new_key_id(project, request.id))
        now = self.clock()
        if self.request_log.applied(request, str(name), now):
            return self.get_key(name), ""
        secret = keyformat.new_secret()
        key = ApiKey.create(
            name,
            display_name,
            description,
            deployments,
            expire_time,
            secret_sha256=keyformat.digest(secret).hex(),
            secret_hint=keyformat.hint(secret),
            actor=actor,
            request_id=request.id,
            now=now,
        )
        try:
            self.save(key, request=request, side=self.request_log.record(request, str(name), now))
        except IntegrityError:
            if self.request_log.applied(request, str(name), now):
                return self.get_key(name), ""  # the first attempt won a race with this retry
            raise KeyAlreadyExists(f"{name} already exists") from None
        return key, secret

    def update_key(
        self,
        name: KeyName,
        *,
        display_name: str | None = None,
        description: str | None = None,
        expire_time: datetime | object | None = UNCHANGED,
        **options: Any,
    ) -> ApiKey:
        def update(key: ApiKey, **context: Any) -> None:
            key.change_details(display_name, description, **context)
            if expire_time is not UNCHANGED:
                assert expire_time is None or isinstance(expire_time, datetime)
                key.change_expiry(expire_time, **context)

        return self._change(name, update, **options)

    def attach_deployment(self, name: KeyName, deployment: str, **options: Any) -> ApiKey:
        return self._change(name, lambda key, **c: key.attach(deployment, **c), **options)

    def detach_deployment(self, name: KeyName, deployment: str, **options: Any) -> ApiKey:
        return self._change(name, lambda key, **c: key.detach(deployment, **c), **options)

    def rotate_key(self, name: KeyName, grace: timedelta, **options: Any) -> tuple[ApiKey, str]:
        """The key and its new secret; for a retried request, the key and no secret."""
        secret = keyformat.new_secret()
        rotated = False

        def rotate(key: ApiKey, **context: Any) -> None:
            nonlocal rotated
            key.rotate(keyformat.digest(secret).hex(), keyformat.hint(secret), grace, **context)
            rotated = True

        key = self._change(name, rotate, **options)
        return key, secret if rotated else ""

    def delete_key(self, name: KeyName, **options: Any) -> ApiKey:
        return self._change(name, lambda key, **c: key.delete(**c), **options)

    def purge_key(self, name: KeyName, **options: Any) -> ApiKey:
        """Record the purge and destroy the key's data key in one transaction: once the
        purge is stored, its words are unreadable (the catalog's copy is blanked by the
        projections, before the reply)."""
        key = self._change(
            name,
            lambda key, **c: key.purge_personal_data(**c),
            side=self.data_keys.destroyed(ApiKey.id_for(name)),
            **options,
        )
        self._after_stored(lambda: self.data_keys.forget(key.id))
        return key

    def projector(self, index: ValidationIndex, catalog: Catalog, audit: AuditLog) -> Projector:
        """What feeds this store's events to the read models, in store order."""
        return Projector(
            self.recorder,
            self.mapper,
            index,
            catalog,
            audit,
            on_purged=self.forget_purged,
            prefetch=self.data_keys.load,
        )

    def forget_purged(self, owners: Iterable[UUID]) -> None:
        """Purges this replica has just seen (their data keys are gone with their
        events): drop any copy of those keys from memory and, the catalog's words being
        blanked by now, empty the WAL so that no older page of theirs stays in the files."""
        for owner in owners:
            self.data_keys.forget(owner)
        if not self.data_keys.checkpoint():
            log.warning("the WAL could not be emptied after a purge; retried at the next one")

    def finish_purges(self, purged: Iterable[UUID]) -> None:
        """At start, once caught up: destroy any data key of a purged key that is left
        (a store purged by an older edgekeys that crashed in between), and empty the WAL."""
        if destroyed := self.data_keys.destroy_purged(purged):
            log.warning("destroyed %d data keys that purges had left behind", destroyed)
        if not self.data_keys.checkpoint():
            log.warning("the WAL could not be emptied at start: another process reads the store")

    def _change(
        self,
        name: KeyName,
        command: Callable[..., None],
        *,
        etag: str = "",
        actor: str = ANONYMOUS,
        request: Request = NO_REQUEST,
        side: list[Side] | None = None,
    ) -> ApiKey:
        """Run `command` on the current key and save what it recorded, with `side`
        statements, once.

        A request that took effect already changes nothing. Without an etag a lost race
        with another writer is a Conflict, for the caller to try again on the fresh key;
        with one, the caller asked for exactly the version it saw, so the race is theirs
        to see.
        """
        key = self.get_key(name)
        now = self.clock()
        if self.request_log.applied(request, str(name), now):
            return key
        if etag and etag != etag_of(key.version):
            raise StaleEtag(f"{name} changed since etag {etag!r}; read it again")
        command(key, actor=actor, request_id=request.id, now=now)
        recorded = self.request_log.record(request, str(name), now)
        if not recorded and not key.pending_events:
            return key  # nothing to store: the key already was as asked
        try:
            sides = [*recorded, *(side or ())] if key.pending_events else recorded
            self.save(key, request=request, side=sides)
        except IntegrityError:
            if self.request_log.applied(request, str(name), now):
                return self.get_key(name)
            if etag:
                raise StaleEtag(f"{name} changed while this request ran") from None
            raise Conflict(f"{name} changed while this request ran") from None
        return key


def _new_key_id(project: str, request_id: str) -> str:
    """A server-picked key ID. Derived from the request id when there is one, so a
    retried create finds the key its first attempt made."""
    seed = (
        hashlib.sha256(f"{project}/{request_id}".encode()).digest()
        if request_id
        else secrets.token_bytes(16)
    )
    number = int.from_bytes(seed[:12])
    chars = []
    for _ in range(16):
        number, digit = divmod(number, 36)
        chars.append("0123456789abcdefghijklmnopqrstuvwxyz"[digit])
    return "key-" + "".join(chars)
