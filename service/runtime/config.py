"""The one configuration object. Every `edgekeys serve` flag `--some-flag` can also be
set with the environment variable `EDGEKEYS_SOME_FLAG`; the flag wins."""

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from service.cli.client import is_loopback
from service.runtime import logs
from service.security import sealing

ENV_PREFIX = "EDGEKEYS_"
OFF = "off"  # an address that is not served


@dataclass(frozen=True)
class Settings:
    address: str = "127.0.0.1:50051"
    database_url: str = "sqlite:///var/edgekeys.db"
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_address: str = ""
    http_address: str = "127.0.0.1:8080"
    poll_interval: float = 0.05
    workers: int = 1
    follow: str = ""
    max_staleness: float = 900.0
    shutdown_grace: float = 5.0
    last_use_interval: float = 60.0
    callers_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    insecure: bool = False
    failed_validation_rate: float = 1.0
    failed_validation_burst: int = 100
    failed_auth_rate: float = 1.0
    failed_auth_burst: int = 100
    # Environment only (a command line is visible to every user), never logged.
    encryption_key: str = dataclasses.field(default="", repr=False)

    @staticmethod
    def env_name(field: str) -> str:
        return ENV_PREFIX + field.upper()


_HELP = {
    "address": "host:port to serve gRPC on",
    "database_url": "event store: sqlite:///relative.db, sqlite:////absolute.db or "
    "postgresql://USER@HOST:PORT/DBNAME (shared by several replicas)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "text, or json: one JSON object per line",
    "metrics_address": "host:port to serve Prometheus metrics on (/metrics); empty: off. "
    "With --workers N, worker i serves on port + i",
    "http_address": "host:port to serve HTTP on (REST/JSON, Gcore's v3 API-key routes, the "
    "console), or off. With --workers N, worker i serves on port + i",
    "poll_interval": "seconds between polls of the store for changes made by other processes",
    "workers": "processes serving the same address (the kernel spreads connections)",
    "follow": "host:port of an upstream edgekeys to follow: a validation-only replica with "
    "no database",
    "max_staleness": "seconds a follower keeps validating without word from its upstream; "
    "after that it fails closed",
    "shutdown_grace": "seconds requests in flight get to finish after SIGTERM (health turns "
    "NOT_SERVING at once)",
    "last_use_interval": "seconds between writes of the keys' last use (last_use_time) to "
    "the catalog",
    "callers_file": "TOML file of the callers allowed in (token digests, roles, projects); "
    "re-read on SIGHUP and when it changes",
    "tls_cert": "PEM certificate chain to serve TLS with (needs --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA certificates: require a client certificate they signed (mTLS); "
    "its subject is the caller",
    "insecure": "listen on a non-loopback address with no callers file and no mTLS: anyone "
    "who reaches the port may manage every key",
    "failed_validation_rate": "failed validations per second allowed per end client "
    "(ValidateApiKey's client_address, Check's source address) once its burst is spent; "
    "0: no limit",
    "failed_validation_burst": "failed validations an end client may make in a row",
    "failed_auth_rate": "failed caller authentications per second allowed per peer address "
    "once its burst is spent; 0: no limit",
    "failed_auth_burst": "failed caller authentications a peer address may make in a row",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


ENV_ONLY = frozenset({"encryption_key"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field in fields(Settings):
        if field.name in ENV_ONLY:
            continue
        flag = "--" + field.name.replace("_", "-")
        env = Settings.env_name(field.name)
        if field.type is bool:
            parser.add_argument(
                flag,
                dest=field.name,
                action="store_true",
                default=os.environ.get(env, ""),
                help=f"{_HELP[field.name]} (env {env}=1)",
            )
            continue
        parser.add_argument(
            flag,
            dest=field.name,
            type=_convert(field.type),
            default=os.environ.get(env) or field.default,  # empty: unset
            help=f"{_HELP[field.name]} (env {env}, default %(default)s)",
        )


def _convert(kind: object) -> Callable[[str], Any]:
    if kind is bool:
        return _boolean
    return kind if kind in (int, float) else str


def _boolean(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.strip().lower() not in (*_TRUE, *_FALSE):
        raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE[1:])}, not {value!r}")
    return value.strip().lower() in _TRUE


def from_arguments(arguments: argparse.Namespace) -> Settings:
    values = {
        f.name: os.environ.get(Settings.env_name(f.name), "")
        if f.name in ENV_ONLY
        else getattr(arguments, f.name)
        for f in fields(Settings)
    }
    # argparse converts only values given on the command line; env defaults are strings.
    try:
        settings = Settings(**{f.name: _convert(f.type)(values[f.name]) for f in fields(Settings)})
    except ValueError as error:
        raise ValueError(f"bad setting: {error}") from None
    if settings.workers < 1:
        raise ValueError("--workers must be at least 1")
    if settings.last_use_interval <= 0:
        raise ValueError("--last-use-interval must be positive")
    if settings.poll_interval <= 0:
        raise ValueError("--poll-interval must be positive")
    if settings.shutdown_grace < 0:
        raise ValueError("--shutdown-grace must be 0 or more")
    if not settings.max_staleness > 0:
        raise ValueError("--max-staleness must be positive")
    if settings.log_format not in logs.FORMATS:
        raise ValueError(f"--log-format must be {' or '.join(logs.FORMATS)}")
    if settings.metrics_address and not _is_host_port(settings.metrics_address, lowest=0):
        raise ValueError(f"--metrics-address must be HOST:PORT, not {settings.metrics_address!r}")
    if settings.workers > 1 and settings.metrics_address.endswith(":0"):
        raise ValueError("--workers needs a fixed --metrics-address port, not :0")
    if settings.http_address != OFF and not _is_host_port(settings.http_address, lowest=0):
        raise ValueError(f"--http-address must be HOST:PORT or off, not {settings.http_address!r}")
    if settings.workers > 1 and settings.http_address.endswith(":0"):
        raise ValueError("--workers needs a fixed --http-address port, not :0")
    if settings.follow and not _is_host_port(settings.follow):
        raise ValueError(f"--follow must be HOST:PORT, not {settings.follow!r}")
    for name in ("failed_validation", "failed_auth"):
        rate = getattr(settings, f"{name}_rate")
        if not 0 <= rate < float("inf") or getattr(settings, f"{name}_burst") < 1:
            flag = name.replace("_", "-")
            raise ValueError(f"--{flag}-rate must be 0 or more and --{flag}-burst at least 1")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ValueError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
    if settings.encryption_key:
        sealing.parse_key(settings.encryption_key)
    guarded = settings.callers_file or settings.tls_client_ca
    for address in (settings.address, settings.http_address):
        if address != OFF and not (guarded or settings.insecure or is_loopback(address)):
            raise ValueError(
                f"refusing to listen on {address} with no callers file and no mTLS: "
                "set EDGEKEYS_CALLERS_FILE (or --tls-client-ca), listen on 127.0.0.1, "
                "or pass --insecure"
            )
    return settings


def _is_host_port(address: str, lowest: int = 1) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and lowest <= int(port) < 65536
