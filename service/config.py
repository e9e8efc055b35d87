"""The one configuration object. Every `edgekeys serve` flag `--some-flag` can also be
set with the environment variable `EDGEKEYS_SOME_FLAG`; the flag wins."""

import argparse
import os
from dataclasses import dataclass, fields

ENV_PREFIX = "EDGEKEYS_"


@dataclass(frozen=True)
class Settings:
    address: str = "127.0.0.1:50051"
    database_url: str = "sqlite:///var/edgekeys.db"
    log_level: str = "INFO"
    poll_interval: float = 1.0

    @staticmethod
    def env_name(field: str) -> str:
        return ENV_PREFIX + field.upper()


_HELP = {
    "address": "host:port to serve gRPC on",
    "database_url": "event store: sqlite:///relative.db or sqlite:////absolute.db",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "poll_interval": "seconds between polls of the store for changes made by other processes",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field in fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        env = Settings.env_name(field.name)
        parser.add_argument(
            flag,
            dest=field.name,
            type=float if field.type in (float, "float") else str,
            default=os.environ.get(env, field.default),
            help=f"{_HELP[field.name]} (env {env}, default %(default)s)",
        )


def from_arguments(arguments: argparse.Namespace) -> Settings:
    return Settings(**{f.name: getattr(arguments, f.name) for f in fields(Settings)})
