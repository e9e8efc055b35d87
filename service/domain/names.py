"""Resource names: `projects/{project}/apiKeys/{api_key_id}` and
`projects/{project}/deployments/{deployment}`, every ID an RFC-1034 label; a project may
also be a project number (decimal, no leading zero, 1 to 2^63-1), as Gcore's integer
project IDs and Google's resource names allow."""

import re
from typing import NamedTuple

ID_PATTERN = r"[a-z][a-z0-9-]{2,61}[a-z0-9]"
PROJECT_PATTERN = rf"(?:{ID_PATTERN}|[1-9][0-9]{{0,18}})"
PROJECT_RULE = f"a project ID matching ^{ID_PATTERN}$ or a project number (1 to 2^63-1)"
_MAX_NUMBER = 2**63 - 1
_ID = re.compile(ID_PATTERN)
_PROJECT_ID = re.compile(PROJECT_PATTERN)
_PROJECT = re.compile(rf"projects/({PROJECT_PATTERN})")
_KEY = re.compile(rf"projects/({PROJECT_PATTERN})/apiKeys/({ID_PATTERN})")
_DEPLOYMENT = re.compile(rf"projects/({PROJECT_PATTERN})/deployments/({ID_PATTERN})")


class KeyName(NamedTuple):
    project: str
    key_id: str

    def __str__(self) -> str:
        return f"projects/{self.project}/apiKeys/{self.key_id}"


def is_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def is_project(value: str) -> bool:
    """A project ID, or a project number."""
    return _PROJECT_ID.fullmatch(value) is not None and _in_range(value)


def _in_range(project: str) -> bool:
    return not project.isdigit() or int(project) <= _MAX_NUMBER


def parse_project(name: str) -> str | None:
    """The project of `projects/{project}`, or None when malformed."""
    match = _PROJECT.fullmatch(name)
    return match[1] if match and _in_range(match[1]) else None


def parse_key(name: str) -> KeyName | None:
    match = _KEY.fullmatch(name)
    return KeyName(match[1], match[2]) if match and _in_range(match[1]) else None


def key_project(name: str) -> str:
    """The project of a key's name that is known to be well formed (an event's, a
    catalog row's): the one place that takes a key name apart without checking it."""
    return name.split("/", 2)[1]


def last_id(name: str) -> str:
    """The ID a well-formed resource name ends with (a key's, a deployment's): what
    Gcore's API calls a key's or a deployment's name."""
    return name.rsplit("/", 1)[-1]


def deployment_project(name: str) -> str | None:
    """The project of a deployment name, or None when malformed."""
    match = _DEPLOYMENT.fullmatch(name)
    return match[1] if match and _in_range(match[1]) else None
