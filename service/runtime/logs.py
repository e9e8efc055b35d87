"""Logging: text lines for people, or one JSON object per line (`--log-format json`)
for a log collector.

Lines about calls (`edgekeys.calls`, service.api.interceptors) and changes
(`edgekeys.changes`, service.write.keystore) carry named fields (`extra={"fields": …}`):
appended as `name=value` in text, top-level keys in JSON, empty ones left out. No secret
is ever a field; the values that come from a request are logged only when they have the
form of a name or a request id, so a secret pasted in the wrong field stays out too.
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")


def configure(level: str, form: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if form == "json" else _Text())
    logging.basicConfig(level=level.upper(), handlers=[handler])


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """A line's named fields (`extra={"fields": {...}}`), those that are not empty."""
    found: dict[str, Any] = getattr(record, "fields", {})
    return {name: value for name, value in found.items() if value not in ("", None)}


class _Text(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _fields(record)
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
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
