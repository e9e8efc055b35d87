"""`edgekeys` command line."""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from service.cli import client
from service.cli import keys as client_keys
from service.runtime import config, logs
from service.security import callers, sealing

log = logging.getLogger("edgekeys")


def main(argv: list[str] | None = None) -> int:
    options = client.client_options()
    parser = argparse.ArgumentParser(prog="edgekeys", description=__doc__, parents=[options])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the gRPC API")
    config.add_arguments(serve)
    _add_callers_commands(commands, options)
    _add_store_commands(commands)
    client_keys.add_commands(commands, options)
    client.add_commands(commands, options)
    arguments = parser.parse_args(argv)
    if arguments.command == "callers":
        return _callers_add(arguments)
    if arguments.command == "store":
        return _store_copy(arguments)
    if arguments.command != "serve":
        return client.run(arguments)
    return _serve_command(arguments)


# The server's modules (SQLAlchemy, the event store, the projections) are imported only
# by the commands that need them: client commands start in a fraction of the time.


def _serve_command(arguments: argparse.Namespace) -> int:
    import sqlalchemy.exc
    from eventsourcing import persistence

    from service.write.keystore import UnreadableStore

    try:
        settings = config.from_arguments(arguments)
        logs.configure(settings.log_level, settings.log_format)
        upstream = client.Credentials.of(arguments)  # a follower's, to reach its upstream
        if settings.workers > 1:
            return _supervise(settings, upstream)
        asyncio.run(_serve(settings, upstream))
    except UnreadableStore as error:
        print(f"edgekeys: cannot serve: {error} ({sealing.ENV})", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as error:
        print(f"edgekeys: cannot serve: {error}", file=sys.stderr)
        return 2
    except (sqlalchemy.exc.OperationalError, persistence.OperationalError) as error:
        print(f"edgekeys: cannot serve: {_reason(error)}", file=sys.stderr)
        return 2
    return 0


async def _serve(
    settings: config.Settings,
    upstream: client.Credentials,
    supervisor: int | None = None,
) -> None:
    from service.runtime.server import Server

    credentials = upstream.channel(settings.follow) if settings.follow else None
    server = Server(settings, upstream_credentials=credentials)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    if server.gate is not None:
        loop.add_signal_handler(signal.SIGHUP, server.gate.reload)
    if supervisor is not None:
        orphaned = asyncio.create_task(_until_orphaned(supervisor))
        orphaned.add_done_callback(lambda _: stopping.set())
    await stopping.wait()
    log.info("stopping: NOT_SERVING, up to %g s for requests in flight", settings.shutdown_grace)
    await server.stop(settings.shutdown_grace)
    log.info("stopped")


def _supervise(settings: config.Settings, upstream: client.Credentials) -> int:
    """Run `workers` server processes on one address (SO_REUSEPORT: the kernel spreads
    connections over them), replace any that dies, and stop them all on a signal."""
    if settings.address.endswith(":0"):
        raise ValueError("--workers needs a fixed port, not :0")
    spawn = multiprocessing.get_context("spawn")

    def start(i: int) -> multiprocessing.process.BaseProcess:
        own = dataclasses.replace(
            settings,
            metrics_address=_shifted(settings.metrics_address, i),
            http_address=_shifted(settings.http_address, i),
        )
        worker = spawn.Process(target=_worker, args=(own, upstream, os.getpid()), daemon=False)
        worker.start()
        return worker

    workers = [start(i) for i in range(settings.workers)]
    log.info("%d workers serving %s", settings.workers, settings.address)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    while not stopping:
        for i, worker in enumerate(workers):
            if worker.exitcode is not None and not stopping:
                if time.monotonic() - started < 10:  # failing at start: do not loop
                    stop(signal.SIGTERM, None)
                    break
                log.error("worker %s exited (%s); starting another", worker.pid, worker.exitcode)
                workers[i] = start(i)
        time.sleep(0.2)
    for worker in workers:
        worker.join()
    return max(worker.exitcode or 0 for worker in workers)


def _shifted(address: str, offset: int) -> str:
    """`host:port` moved `offset` ports up: worker i serves its metrics (and HTTP) on
    port + i."""
    if not address or address == config.OFF:
        return address
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + offset}"


def _worker(settings: config.Settings, upstream: client.Credentials, supervisor: int) -> None:
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(_serve(settings, upstream, supervisor))


async def _until_orphaned(supervisor: int) -> None:
    """Returns when the supervisor is gone (killed with no chance to stop its workers):
    a worker must not keep serving the port on its own."""
    while os.getppid() == supervisor:
        await asyncio.sleep(1)
    log.error("the supervisor (pid %d) is gone: stopping", supervisor)


def _reason(error: Exception) -> str:
    """One line for a start-up failure; a database driver's error says it is unreachable."""
    if isinstance(error, ValueError):
        return str(error)
    return (
        "the database is unreachable: " + str(getattr(error, "orig", None) or error).splitlines()[0]
    )


def _add_callers_commands(commands: Any, options: argparse.ArgumentParser) -> None:
    group = commands.add_parser("callers", help="who may call this edgekeys (the callers file)")
    verbs = group.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser(
        "add",
        parents=[options],
        help="add a caller to the callers file and print its new token, once",
    )
    add.add_argument("name", help="the caller's name, recorded as the actor of its changes")
    add.add_argument(
        "--role", action="append", required=True, choices=callers.ROLES, help="repeatable"
    )
    add.add_argument(
        "--project",
        action="append",
        required=True,
        help="a project it may touch (acme or projects/acme), or '*' for all; repeatable",
    )
    add.add_argument("--tls-subject", help="the subject of its mTLS client certificate")
    add.add_argument(
        "--no-token", action="store_true", help="no bearer token: the certificate only"
    )
    add.add_argument(
        "--file",
        default=os.environ.get("EDGEKEYS_CALLERS_FILE"),
        help="the callers file (env EDGEKEYS_CALLERS_FILE); created if missing",
    )


def _callers_add(arguments: argparse.Namespace) -> int:
    """Append a caller to the callers file; the server picks it up within a second."""
    if not arguments.file:
        print("edgekeys: set EDGEKEYS_CALLERS_FILE or pass --file", file=sys.stderr)
        return 2
    if arguments.no_token and not arguments.tls_subject:
        print("edgekeys: --no-token needs --tls-subject", file=sys.stderr)
        return 2
    token, digest = (None, None) if arguments.no_token else callers.new_token()
    projects = [p.removeprefix("projects/") for p in arguments.project]
    table = callers.caller_table(
        arguments.name, digest, sorted(set(arguments.role)), projects, arguments.tls_subject
    )
    path = Path(arguments.file)
    try:
        existing = path.read_text() if path.exists() else ""
        separator = "" if not existing else "\n" if existing.endswith("\n") else "\n\n"
        callers.Callers.parse(existing + separator + table, str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640), "a") as file:
            file.write(separator + table)
    except (OSError, ValueError) as error:
        print(f"edgekeys: {error}", file=sys.stderr)
        return 2
    if getattr(arguments, "json", False):
        print(json.dumps({"name": arguments.name, "token": token or ""}))
    elif token:
        print(token)
    if token:
        print(
            f"edgekeys: {arguments.name} added to {path}. This token is shown once and "
            "only its SHA-256 is kept: copy it now.",
            file=sys.stderr,
        )
    return 0


def _add_store_commands(commands: Any) -> None:
    group = commands.add_parser("store", help="maintain an event store (edgekeys stopped)")
    verbs = group.add_subparsers(dest="verb", required=True)
    copy = verbs.add_parser(
        "copy",
        help="copy every event into a new, empty store, encrypted with "
        f"{sealing.ENV} (the source's key, if any, in {SOURCE_KEY})",
    )
    copy.add_argument("--from", dest="source", required=True, help="database URL to read")
    copy.add_argument("--to", dest="target", required=True, help="database URL of an empty store")


SOURCE_KEY = "EDGEKEYS_SOURCE_ENCRYPTION_KEY"


def _store_copy(arguments: argparse.Namespace) -> int:
    import sqlalchemy.exc
    from eventsourcing import persistence

    from service.domain.clock import utc_now
    from service.storage.database import redacted
    from service.write.keystore import KeyStore, UnreadableStore
    from service.write.store_copy import copy_store

    def progress(copied: int, total: int) -> None:
        print(f"\rcopied {copied:,} of {total:,} events", end="", file=sys.stderr, flush=True)

    try:
        try:
            source = KeyStore(arguments.source, utc_now, os.environ.get(SOURCE_KEY, ""))
        except UnreadableStore as error:
            raise ValueError(f"the source store: {error} ({SOURCE_KEY})") from None
        target = KeyStore(arguments.target, utc_now, os.environ.get(sealing.ENV, ""))
        try:
            events, data_keys = copy_store(source, target, progress)
        finally:
            source.close()
            target.close()
    except (ValueError, sqlalchemy.exc.OperationalError, persistence.OperationalError) as error:
        print(f"\nedgekeys: cannot copy: {_reason(error)}", file=sys.stderr)
        return 2
    encrypted = "encrypted" if os.environ.get(sealing.ENV) else "NOT encrypted"
    print(
        f"\ncopied {events:,} events and {data_keys:,} data keys into "
        f"{redacted(arguments.target)} ({encrypted}). Start edgekeys on it with the same "
        f"{sealing.ENV}, then check it with VerifyAuditLog.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
