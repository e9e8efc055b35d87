"""The ApiKey aggregate: every change to a key is one of the events below.

Events carry who made the change (``actor``) and the request it came with
(``request_id``), never the secret. Their topics are explicit and must never
change: stored history is decoded by topic.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from service.domain.errors import (
    AlreadyPurged,
    DeploymentAlreadyAttached,
    DeploymentNotAttached,
    DeploymentOfOtherProject,
    ExpiryNotInFuture,
    GraceOutOfRange,
    KeyIsDeleted,
    KeyNotDeleted,
    TooManyDeployments,
)
from service.domain.names import KeyName, deployment_project, key_project

MAX_DEPLOYMENTS = 100
MAX_GRACE = timedelta(days=7)  # how long a rotated-away secret may keep working


@dataclass(frozen=True)
class PersonalData:
    """A person's words about a key (its name or description). Stored encrypted with a
    data key of the key's own, so destroying that data key erases them for good;
    `text` is None once erased."""

    owner: UUID
    text: str | None

    @property
    def shown(self) -> str:
        return self.text or ""


class ApiKey(Aggregate):
    TOPIC = "edgekeys:ApiKey"

    class Event(Aggregate.Event):
        TOPIC = "edgekeys:ApiKey.Event"
        actor: str
        request_id: str  # for the audit trail; which requests took effect is kept apart

    class KeyCreated(Event, Aggregate.Created):
        TOPIC = "edgekeys:KeyCreated"
        name: str
        display_name: PersonalData
        description: PersonalData
        deployments: list[str]
        expire_time: datetime | None
        secret_sha256: str
        secret_hint: str

    # The library would otherwise derive a `Created` class that inherits Event's topic.
    Created = KeyCreated

    class DetailsChanged(Event):
        """Name and/or description changed; None means unchanged."""

        TOPIC = "edgekeys:DetailsChanged"
        display_name: PersonalData | None
        description: PersonalData | None

        def apply(self, key: "ApiKey") -> None:
            if self.display_name is not None:
                key.personal_name = self.display_name
            if self.description is not None:
                key.personal_description = self.description

    class DeploymentAttached(Event):
        TOPIC = "edgekeys:DeploymentAttached"
        deployment: str

        def apply(self, key: "ApiKey") -> None:
            key.deployments.append(self.deployment)

    class DeploymentDetached(Event):
        TOPIC = "edgekeys:DeploymentDetached"
        deployment: str

        def apply(self, key: "ApiKey") -> None:
            key.deployments.remove(self.deployment)

    class ExpiryChanged(Event):
        """A new expiry; None means the key never expires."""

        TOPIC = "edgekeys:ExpiryChanged"
        expire_time: datetime | None

        def apply(self, key: "ApiKey") -> None:
            key.expire_time = self.expire_time

    class KeyDeleted(Event):
        TOPIC = "edgekeys:KeyDeleted"

        def apply(self, key: "ApiKey") -> None:
            key.delete_time = self.timestamp

    class SecretRotated(Event):
        """A new secret; the previous one works until `previous_until` (None: it
        stopped at once). Only digests and a hint are recorded, never a secret."""

        TOPIC = "edgekeys:SecretRotated"
        secret_sha256: str
        secret_hint: str
        previous_until: datetime | None

        def apply(self, key: "ApiKey") -> None:
            key.previous_secret_sha256 = key.secret_sha256 if self.previous_until else ""
            key.previous_secret_until = self.previous_until
            key.secret_sha256 = self.secret_sha256
            key.secret_hint = self.secret_hint

    class PersonalDataPurged(Event):
        """The key's data key was destroyed: its name and description are unreadable."""

        TOPIC = "edgekeys:PersonalDataPurged"

        def apply(self, key: "ApiKey") -> None:
            key.purge_time = self.timestamp
            key.personal_name = PersonalData(key.id, None)
            key.personal_description = PersonalData(key.id, None)

    # Class defaults, so keys snapshotted before rotation existed load as never rotated.
    previous_secret_sha256 = ""  # the secret before the last rotation, while it works
    previous_secret_until: datetime | None = None

    def __init__(
        self,
        name: str,
        display_name: PersonalData,
        description: PersonalData,
        deployments: list[str],
        expire_time: datetime | None,
        secret_sha256: str,
        secret_hint: str,
        actor: str,  # the creation event's, like request_id: recorded there, not here
        request_id: str,
    ) -> None:
        self.name = name
        # Kept as PersonalData, so snapshots hold them encrypted too.
        self.personal_name = display_name
        self.personal_description = description
        self.deployments = list(deployments)
        self.expire_time = expire_time
        self.secret_sha256 = secret_sha256
        self.secret_hint = secret_hint
        self.delete_time: datetime | None = None
        self.purge_time: datetime | None = None

    @staticmethod
    def id_for(name: KeyName | str) -> UUID:
        """Aggregate IDs derive from resource names, so a name is enough to load a key
        and the store itself refuses a second key of the same name."""
        return uuid5(NAMESPACE_URL, f"edgekeys:{name}")

    @classmethod
    def create(
        cls,
        name: KeyName,
        display_name: str,
        description: str,
        deployments: list[str],
        expire_time: datetime | None,
        secret_sha256: str,
        secret_hint: str,
        *,
        actor: str,
        request_id: str,
        now: datetime,
    ) -> "ApiKey":
        for deployment in deployments:
            _check_same_project(name.project, deployment)
        if len(set(deployments)) > MAX_DEPLOYMENTS:
            raise TooManyDeployments(f"a key reaches at most {MAX_DEPLOYMENTS} deployments")
        _check_in_future(expire_time, now)
        key_id = cls.id_for(name)
        return cls._create(
            cls.KeyCreated,
            id=key_id,
            name=str(name),
            display_name=PersonalData(key_id, display_name),
            description=PersonalData(key_id, description),
            deployments=list(dict.fromkeys(deployments)),
            expire_time=expire_time,
            secret_sha256=secret_sha256,
            secret_hint=secret_hint,
            actor=actor,
            request_id=request_id,
            timestamp=now,
        )

    @property
    def display_name(self) -> str:
        return self.personal_name.shown

    @property
    def description(self) -> str:
        return self.personal_description.shown

    @property
    def project(self) -> str:
        return key_project(self.name)

    @property
    def is_deleted(self) -> bool:
        return self.delete_time is not None

    def change_details(
        self, display_name: str | None, description: str | None, **context: Any
    ) -> None:
        self._check_not_deleted()
        if display_name == self.display_name:
            display_name = None
        if description == self.description:
            description = None
        if display_name is not None or description is not None:
            self._record(
                self.DetailsChanged,
                display_name=self._personal(display_name),
                description=self._personal(description),
                **context,
            )

    def change_expiry(self, expire_time: datetime | None, *, now: datetime, **context: Any) -> None:
        self._check_not_deleted()
        if expire_time != self.expire_time:
            _check_in_future(expire_time, now)
            self._record(self.ExpiryChanged, expire_time=expire_time, now=now, **context)

    def attach(self, deployment: str, **context: Any) -> None:
        self._check_not_deleted()
        _check_same_project(self.project, deployment)
        if deployment in self.deployments:
            raise DeploymentAlreadyAttached(f"{deployment} is already attached to {self.name}")
        if len(self.deployments) >= MAX_DEPLOYMENTS:
            raise TooManyDeployments(f"a key reaches at most {MAX_DEPLOYMENTS} deployments")
        self._record(self.DeploymentAttached, deployment=deployment, **context)

    def detach(self, deployment: str, **context: Any) -> None:
        self._check_not_deleted()
        if deployment not in self.deployments:
            raise DeploymentNotAttached(f"{deployment} is not attached to {self.name}")
        self._record(self.DeploymentDetached, deployment=deployment, **context)

    def rotate(
        self,
        secret_sha256: str,
        secret_hint: str,
        grace: timedelta,
        *,
        now: datetime,
        **context: Any,
    ) -> None:
        """A new secret; the current one keeps working for `grace`, but not past the
        key's expiry. A secret still in its grace from an earlier rotation stops now."""
        self._check_not_deleted()
        if not timedelta(0) <= grace <= MAX_GRACE:
            raise GraceOutOfRange(f"grace_period must be 0 to {MAX_GRACE.days} days")
        until = now + grace
        if self.expire_time is not None:
            until = min(until, self.expire_time)
        self._record(
            self.SecretRotated,
            secret_sha256=secret_sha256,
            secret_hint=secret_hint,
            previous_until=until if until > now else None,
            now=now,
            **context,
        )

    def delete(self, **context: Any) -> None:
        self._check_not_deleted()
        self._record(self.KeyDeleted, **context)

    def purge_personal_data(self, **context: Any) -> None:
        if not self.is_deleted:
            raise KeyNotDeleted(f"{self.name} must be deleted before its data is purged")
        if self.purge_time is not None:
            raise AlreadyPurged(f"{self.name} was purged already")
        self._record(self.PersonalDataPurged, **context)

    def _personal(self, text: str | None) -> PersonalData | None:
        return None if text is None else PersonalData(self.id, text)

    def _record(
        self, event_class: type[Event], *, actor: str, request_id: str, now: datetime, **values: Any
    ) -> None:
        self.trigger_event(event_class, actor=actor, request_id=request_id, timestamp=now, **values)

    def _check_not_deleted(self) -> None:
        if self.is_deleted:
            raise KeyIsDeleted(f"{self.name} was deleted and cannot change")


def _check_same_project(project: str, deployment: str) -> None:
    if deployment_project(deployment) != project:
        raise DeploymentOfOtherProject(
            f"{deployment} is not a deployment of project {project}; "
            "a key reaches only deployments of its own project"
        )


def _check_in_future(expire_time: datetime | None, now: datetime) -> None:
    if expire_time is not None and expire_time <= now:
        raise ExpiryNotInFuture(f"expire_time {expire_time.isoformat()} is not in the future")
