"""Messages as pages show them: times in UTC (the browser adds its local time beside
each), keys with their IDs and state, a key's events with what each changed."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from service.console.forms import deployment_id, deployment_ids

SOON = timedelta(days=7)


@dataclass(frozen=True)
class Moment:
    """A moment: `iso` for <time datetime> (and the local time script), `text` in UTC."""

    at: datetime

    @property
    def iso(self) -> str:
        return self.at.strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def text(self) -> str:
        return self.at.strftime("%Y-%m-%d %H:%M UTC")

    @property
    def date(self) -> str:
        return self.at.strftime("%Y-%m-%d")

    @property
    def midnight(self) -> bool:
        return self.at.time() == datetime.min.time()


def moment(stamp: Timestamp, present: bool = True) -> Moment | None:
    """The moment a Timestamp field holds; None when it is unset (`present` false)."""
    if not present:
        return None
    return Moment(stamp.ToDatetime(tzinfo=UTC))


@dataclass(frozen=True)
class KeyView:
    name: str
    id: str
    display_name: str
    description: str
    deployments: list[str]  # IDs
    expire: Moment | None
    state: str  # Active, Expired, Deleted
    secret_hint: str
    last_used: Moment | None
    created: Moment | None
    updated: Moment | None
    deleted: Moment | None
    previous_secret_until: Moment | None
    etag: str
    expiring_soon: bool = False

    @property
    def active(self) -> bool:
        return self.state != "Deleted"


def key_view(key: pb.ApiKey, now: datetime) -> KeyView:
    expire = moment(key.expire_time, key.HasField("expire_time"))
    deleted = key.state == pb.ApiKey.STATE_DELETED
    expired = expire is not None and expire.at <= now
    previous = moment(key.previous_secret_expire_time, key.HasField("previous_secret_expire_time"))
    return KeyView(
        name=key.name,
        id=key.name.rsplit("/", 1)[-1],
        display_name=key.display_name,
        description=key.description,
        deployments=deployment_ids(key.deployments),
        expire=expire,
        state="Deleted" if deleted else "Expired" if expired else "Active",
        secret_hint=key.secret_hint,
        last_used=moment(key.last_use_time, key.HasField("last_use_time")),
        created=moment(key.create_time, key.HasField("create_time")),
        updated=moment(key.update_time, key.HasField("update_time")),
        deleted=moment(key.delete_time, key.HasField("delete_time")),
        previous_secret_until=previous if previous and previous.at > now else None,
        etag=key.etag,
        expiring_soon=not deleted
        and not expired
        and expire is not None
        and expire.at - now <= SOON,
    )


@dataclass(frozen=True)
class Change:
    what: str  # Name, Description, Inference instances, Expiration, Secret
    old: str | None  # None: nothing to compare with (the key's creation)
    new: str


@dataclass(frozen=True)
class HistoryRow:
    version: int
    when: Moment | None
    actor: str
    title: str
    changes: list[Change] = field(default_factory=list)
    erased: bool = False


TITLES = {
    "KeyCreated": "Created",
    "DetailsChanged": "Details changed",
    "DeploymentAttached": "Inference instance attached",
    "DeploymentDetached": "Inference instance detached",
    "ExpiryChanged": "Expiration changed",
    "KeyDeleted": "Deleted",
    "SecretRotated": "Secret rotated",
    "PersonalDataPurged": "Name and description erased",
}


@dataclass(frozen=True)
class ProjectChange:
    when: Moment | None
    actor: str
    title: str
    key_id: str


def project_changes(events: Iterable[apb.AuditEvent]) -> list[ProjectChange]:
    return [
        ProjectChange(
            moment(e.occur_time, e.HasField("occur_time")),
            e.actor,
            TITLES.get(e.event_type, e.event_type),
            e.api_key.rsplit("/", 1)[-1],
        )
        for e in events
    ]


def _expiry_text(stamp: Timestamp, present: bool) -> str:
    found = moment(stamp, present)
    return found.text if found else "Never expire"


def history(events: Iterable[apb.AuditEvent]) -> list[HistoryRow]:
    """Each event, oldest first, with what it changed: old and new values, from the
    events before it."""
    rows: list[HistoryRow] = []
    state = {"Name": "", "Description": "", "Expiration": "Never expire", "Secret": ""}
    # (the instances are not in `state`: attach and detach name the one they change)
    for event in events:
        kind = event.WhichOneof("values")
        changes: list[Change] = []
        if kind == "key_created":
            values = event.key_created
            new = {
                "Name": values.display_name,
                "Description": values.description,
                "Inference instances": ", ".join(deployment_ids(values.deployments)) or "none",
                "Expiration": _expiry_text(values.expire_time, values.HasField("expire_time")),
                "Secret": values.secret_hint,
            }
            changes = [Change(what, None, value) for what, value in new.items() if value]
            state.update(new)
        elif kind == "details_changed":
            details = event.details_changed
            for what, attribute in (("Name", "display_name"), ("Description", "description")):
                if details.HasField(attribute):
                    new_value = getattr(details, attribute)
                    changes.append(Change(what, state[what], new_value))
                    state[what] = new_value
        elif kind in ("deployment_attached", "deployment_detached"):
            instance = deployment_id(getattr(event, kind).deployment)
            changes = [Change("Inference instance", None, instance)]
        elif kind == "expiry_changed":
            expiry = event.expiry_changed
            new_value = _expiry_text(expiry.expire_time, expiry.HasField("expire_time"))
            changes = [Change("Expiration", state["Expiration"], new_value)]
            state["Expiration"] = new_value
        elif kind == "secret_rotated":
            rotation = event.secret_rotated
            changes = [Change("Secret", state["Secret"], rotation.secret_hint)]
            until = moment(
                rotation.previous_secret_expire_time,
                rotation.HasField("previous_secret_expire_time"),
            )
            changes.append(
                Change("Old secret works until", None, until.text if until else "no grace period")
            )
            state["Secret"] = rotation.secret_hint
        rows.append(
            HistoryRow(
                version=event.version,
                when=moment(event.occur_time, event.HasField("occur_time")),
                actor=event.actor,
                title=TITLES.get(event.event_type, event.event_type),
                changes=changes,
                erased=event.personal_data_erased,
            )
        )
    return rows
