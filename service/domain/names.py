"""Resource names: `projects/{project}/apiKeys/{api_key_id}` and
`projects/{project}/deployments/{deployment}`, every ID an RFC-1034 label."""

import re
from typing import NamedTuple

ID_PATTERN = r"[a-z][a-z0-9-]{2,61}[a-z0-9]"
_ID = re.compile(ID_PATTERN)
_PROJECT = re.compile(rf"projects/({ID_PATTERN})")
_KEY = re.compile(rf"projects/({ID_PATTERN})/apiKeys/({ID_PATTERN})")
_DEPLOYMENT = re.compile(rf"projects/({ID_PATTERN})/deployments/({ID_PATTERN})")


class KeyName(NamedTuple):
    project: str
    key_id: str

    def __str__(self) -> str:
        return f"projects/{self.project}/apiKeys/{self.key_id}"


def is_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def parse_project(name: str) -> str | None:
    """The project ID of `projects/{project}`, or None when malformed."""
    match = _PROJECT.fullmatch(name)
    return match[1] if match else None


def parse_key(name: str) -> KeyName | None:
    match = _KEY.fullmatch(name)
    return KeyName(match[1], match[2]) if match else None


def key_project(name: str) -> str:
    """The project of a key's name that is known to be well formed (an event's, a
    catalog row's): the one place that takes a key name apart without checking it."""
    return name.split("/", 2)[1]


def deployment_project(name: str) -> str | None:
    """The project ID of a deployment name, or None when malformed."""
    match = _DEPLOYMENT.fullmatch(name)
    return match[1] if match else None
