"""Logging: text lines for people, or one JSON object per line (`--log-format json`)
for a log collector.

Lines about calls and changes carry named fields (`extra={"fields": …}`): appended as
`name=value` in text, top-level keys in JSON. No secret is ever a field; the values
that come from a request are logged only when they have the form of a name or a
request id (see `resource`), so a secret pasted in the wrong field stays out too.
"""

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from service import names, requests
from service.errors import InvalidArgument

FORMATS = ("text", "json")
calls = logging.getLogger("edgekeys.calls")  # one line per management or audit RPC
changes = logging.getLogger("edgekeys.changes")  # one line per event this process stored
method: ContextVar[str] = ContextVar("method", default="")  # of the logged call under way


def configure(level: str, form: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if form == "json" else _Text())
    logging.basicConfig(level=level.upper(), handlers=[handler])


def fields(logger: logging.Logger, message: str, **values: object) -> None:
    """An INFO line of `message` and named fields (those that are not empty)."""
    if logger.isEnabledFor(logging.INFO):
        present = {name: value for name, value in values.items() if value not in ("", None)}
        logger.info(message, extra={"fields": present})


def resource(value: str) -> str:
    """A key or project name from a request, or "(malformed)": what a client wrote in
    a name field is logged only if it is a name."""
    if not value or names.parse_key(value) or names.parse_project(value):
        return value
    return "(malformed)"


def request_id(value: str) -> str:
    try:
        return requests.request_id(value)
    except InvalidArgument:
        return "(malformed)"


class _Text(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra: dict[str, Any] = getattr(record, "fields", {})
        if not extra:
            return line
        pairs = " ".join(f"{name}={_text(value)}" for name, value in extra.items())
        head, newline, trace = line.partition("\n")  # a traceback stays last
        return f"{head} {pairs}{newline}{trace}"


def _text(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
