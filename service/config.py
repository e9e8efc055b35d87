"""The one configuration object. Every `edgekeys serve` flag `--some-flag` can also be
set with the environment variable `EDGEKEYS_SOME_FLAG`; the flag wins."""

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "EDGEKEYS_"


@dataclass(frozen=True)
class Settings:
    address: str = "127.0.0.1:50051"
    database_url: str = "sqlite:///var/edgekeys.db"
    log_level: str = "INFO"
    poll_interval: float = 0.05
    workers: int = 1
    follow: str = ""
    max_staleness: float = 900.0

    @staticmethod
    def env_name(field: str) -> str:
        return ENV_PREFIX + field.upper()


_HELP = {
    "address": "host:port to serve gRPC on",
    "database_url": "event store: sqlite:///relative.db, sqlite:////absolute.db or "
    "postgresql://USER@HOST:PORT/DBNAME (shared by several replicas)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "poll_interval": "seconds between polls of the store for changes made by other processes",
    "workers": "processes serving the same address (the kernel spreads connections)",
    "follow": "host:port of an upstream edgekeys to follow: a validation-only replica with "
    "no database",
    "max_staleness": "seconds a follower keeps validating without word from its upstream; "
    "after that it fails closed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field in fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        env = Settings.env_name(field.name)
        parser.add_argument(
            flag,
            dest=field.name,
            type=_convert(field.type),
            default=os.environ.get(env, field.default),
            help=f"{_HELP[field.name]} (env {env}, default %(default)s)",
        )


def _convert(kind: object) -> Callable[[str], Any]:
    return kind if kind in (int, float) else str


def from_arguments(arguments: argparse.Namespace) -> Settings:
    values = {f.name: getattr(arguments, f.name) for f in fields(Settings)}
    # argparse converts only values given on the command line; env defaults are strings.
    try:
        settings = Settings(**{f.name: _convert(f.type)(values[f.name]) for f in fields(Settings)})
    except ValueError as error:
        raise ValueError(f"bad setting: {error}") from None
    if settings.workers < 1:
        raise ValueError("--workers must be at least 1")
    if settings.poll_interval <= 0:
        raise ValueError("--poll-interval must be positive")
    if not settings.max_staleness > 0:
        raise ValueError("--max-staleness must be positive")
    if settings.follow and not _is_host_port(settings.follow):
        raise ValueError(f"--follow must be HOST:PORT, not {settings.follow!r}")
    return settings


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536
