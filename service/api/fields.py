"""Checks on request fields, shared by every RPC. Each returns the parsed value or
raises InvalidArgument naming the field by its path in the request."""

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from service.api.errors import InvalidArgument
from service.domain import names
from service.domain.api_key import MAX_DEPLOYMENTS
from service.domain.names import KeyName

MAX_DISPLAY_NAME = 63
MAX_DESCRIPTION = 300
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LAST_MICROSECOND = datetime.max.replace(tzinfo=UTC)
_MAX_POSITION = 2**63 - 1
_MAX_TOKEN = 1024
_ID_RULE = (
    f"every ID matching ^{names.ID_PATTERN}$ (a project may also be a project number, "
    "1 to 2^63-1, no leading zero)"
)


def project(parent: str, field: str = "parent") -> str:
    project_id = names.parse_project(parent)
    if project_id is None:
        raise InvalidArgument(field, f"expected projects/{{project}} with {_ID_RULE}")
    return project_id


def key_name(name: str, field: str = "name") -> KeyName:
    parsed = names.parse_key(name)
    if parsed is None:
        raise InvalidArgument(
            field, f"expected projects/{{project}}/apiKeys/{{api_key_id}} with {_ID_RULE}"
        )
    return parsed


def key_id(value: str, field: str = "api_key_id") -> str:
    if value and not names.is_id(value):
        raise InvalidArgument(field, f"must match ^{names.ID_PATTERN}$")
    return value


def deployment(name: str, field: str = "deployment", *, project: str | None = None) -> str:
    owner = names.deployment_project(name)
    if owner is None:
        raise InvalidArgument(
            field,
            f"expected projects/{{project}}/deployments/{{deployment}} with {_ID_RULE}",
        )
    if project is not None and owner != project:
        raise InvalidArgument(field, f"{name} is not a deployment of project {project}")
    return name


def deployments(values: Sequence[str], field: str, *, project: str) -> list[str]:
    if len(values) > MAX_DEPLOYMENTS:
        raise InvalidArgument(field, f"at most {MAX_DEPLOYMENTS} deployments, got {len(values)}")
    if len(set(values)) != len(values):
        raise InvalidArgument(field, "lists a deployment more than once")
    return [deployment(v, f"{field}[{i}]", project=project) for i, v in enumerate(values)]


def display_name(value: str, field: str) -> str:
    if not value.strip() or len(value) > MAX_DISPLAY_NAME:
        raise InvalidArgument(field, f"must be 1 to {MAX_DISPLAY_NAME} characters, not blank")
    return value


def description(value: str, field: str) -> str:
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(field, f"must be at most {MAX_DESCRIPTION} characters")
    return value


def timestamp(value: Timestamp, field: str) -> datetime:
    if not (_MIN_SECONDS <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos < 1_000_000_000):
        raise InvalidArgument(field, "must lie between 0001-01-01 and 9999-12-31 (UTC)")
    moment = value.ToDatetime(tzinfo=UTC)  # truncates to microseconds...
    if value.nanos % 1000 and moment < _LAST_MICROSECOND:
        moment += timedelta(microseconds=1)  # ...so round up: never expire earlier than asked
    return moment


def duration(value: Duration, field: str) -> timedelta:
    if not (0 <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos < 1_000_000_000):
        raise InvalidArgument(field, "must be a duration of 0 or more")
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def request_id(value: str) -> str:
    """A UUID in its canonical 8-4-4-4-12 hex form, lower-cased; empty for none."""
    if value and not _UUID.fullmatch(value):
        raise InvalidArgument("request_id", "must be a UUID: 8-4-4-4-12 hexadecimal digits")
    return value.lower()


def page_size(value: int, default: int = DEFAULT_PAGE_SIZE) -> int:
    if value < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(value or default, MAX_PAGE_SIZE)


def skip(value: int) -> int:
    """How many results to skip (AIP-158)."""
    if value < 0:
        raise InvalidArgument("skip", "must not be negative")
    return value


def encode_page_token(position: int, query: Mapping[str, object], at: int | None = None) -> str:
    """An opaque token: where the page ended (a store position, and for pages in
    another order the sort value there, `at`), bound to the query it belongs to."""
    content: dict[str, object] = {"after": position, "query": query}
    if at is not None:
        content["at"] = at
    payload = json.dumps(content, sort_keys=True).encode()
    return base64.urlsafe_b64encode(payload + _seal(payload)).decode()


def decode_page_token(token: str, query: Mapping[str, object]) -> int:
    """The position after which the next page starts; 0 for no token."""
    return decode_page_cursor(token, query)[0]


def decode_page_cursor(token: str, query: Mapping[str, object]) -> tuple[int, int | None]:
    """The position and the sort value (`at`) after which the next page starts."""
    if not token:
        return 0, None
    content = _unseal(token) if len(token) <= _MAX_TOKEN else None
    after = content.get("after") if isinstance(content, dict) else None
    at = content.get("at") if isinstance(content, dict) else None
    if (
        type(after) is not int
        or not 0 <= after <= _MAX_POSITION
        or type(at) not in (int, type(None))
    ):
        raise InvalidArgument("page_token", "is not a token this service issued")
    assert isinstance(content, dict)
    if content.get("query") != query:
        raise InvalidArgument("page_token", "belongs to a different query; start without it")
    return after, at


def _unseal(token: str) -> object:
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
        payload, seal = raw[:-8], raw[-8:]
        return json.loads(payload) if seal == _seal(payload) else None
    except (binascii.Error, UnicodeError, ValueError, RecursionError):
        return None


def _seal(payload: bytes) -> bytes:
    # Catches edited and truncated tokens; a token only ever leads into the query
    # it is bound to, so it needs no secret key.
    return hashlib.sha256(b"edgekeys page token\0" + payload).digest()[:8]
