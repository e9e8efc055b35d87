"""What a person types, as request fields; and which control an error concerns."""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from multidict import MultiMapping

Posted = MultiMapping[object]  # a posted form's fields

_SEPARATORS = re.compile(r"[\s,]+")
_DEPLOYMENT = re.compile(r"projects/[^/]+/deployments/(.+)")


@dataclass(frozen=True)
class Grace:
    value: str  # the form's value
    label: str
    period: timedelta


# RotateApiKey's grace period: None first (the old secret stops at once).
GRACE_PERIODS = (
    Grace("none", "None", timedelta(0)),
    Grace("1h", "1 hour", timedelta(hours=1)),
    Grace("24h", "24 hours", timedelta(hours=24)),
    Grace("7d", "7 days", timedelta(days=7)),
)

# The request field an error names → the control it appears beside.
_CONTROLS = (
    ("api_key.display_name", "name"),
    ("api_key.description", "description"),
    ("api_key.deployments", "instances"),
    ("deployment", "instances"),
    ("api_key.expire_time", "expiration"),
    ("grace_period", "grace"),
    ("secret", "secret"),
)


class FormError(Exception):
    """Input that makes no request: shown beside its control."""

    def __init__(self, control: str, message: str) -> None:
        super().__init__(message)
        self.control = control


def controls(fields: Mapping[str, str]) -> dict[str, str]:
    """Error messages by control, from the fields a refusal names."""
    found: dict[str, str] = {}
    for name, message in fields.items():
        for prefix, control in _CONTROLS:
            if name == prefix or name.startswith((prefix + "[", prefix + ".")):
                found.setdefault(control, message)
    return found


def deployment_names(form: Posted, project: str) -> list[str]:
    """The deployments chosen: the ones already selected (`deployment`, one each) and
    those typed into the Inference instances field (`instances`: IDs separated by
    commas or spaces), as full names, in order, each once. Full names are taken as
    typed, so that the service says what is wrong with another project's."""
    typed = _SEPARATORS.split(str(form.get("instances", "")))
    chosen = [str(d) for d in (*form.getall("deployment", []), *typed) if d]
    names = [
        d if d.startswith("projects/") else f"projects/{project}/deployments/{d}" for d in chosen
    ]
    return list(dict.fromkeys(names))


def deployment_id(name: str) -> str:
    """`llama-3` of projects/acme/deployments/llama-3."""
    found = _DEPLOYMENT.fullmatch(name)
    return found[1] if found else name


def deployment_ids(names: Iterable[str]) -> list[str]:
    return [deployment_id(name) for name in names]


def expiry(form: Posted) -> Timestamp | None:
    """The expiry chosen: None for Never expire; a date means 00:00 UTC that day,
    whatever the browser's time zone (the date travels as the date it is)."""
    if form.get("expiration", "never") != "date":
        return None
    text = str(form.get("expire_date", ""))
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise FormError("expiration", "Choose an expiration date, or Never expire.") from None
    stamp = Timestamp()
    stamp.FromDatetime(datetime(day.year, day.month, day.day, tzinfo=UTC))
    return stamp


def grace_period(form: Posted) -> Duration:
    chosen = form.get("grace_period", "none")
    for grace in GRACE_PERIODS:
        if grace.value == chosen:
            duration = Duration()
            duration.FromTimedelta(grace.period)
            return duration
    raise FormError("grace", "Choose one of the grace periods offered.")


def moment(text: str, control: str) -> Timestamp:
    """A moment typed in UTC (`2030-01-01T12:00`, as a datetime-local input sends it)."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise FormError(control, "Enter a date and time, such as 2030-01-31T12:00.") from None
    stamp = Timestamp()
    stamp.FromDatetime(parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed)
    return stamp
