"""`edgekeys` command line."""

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import time
from types import FrameType

import sqlalchemy.exc
from eventsourcing import persistence

from service import client, config
from service.replication import FollowerServer
from service.server import EdgeKeysServer

log = logging.getLogger("edgekeys")


def main(argv: list[str] | None = None) -> int:
    options = client.client_options()
    parser = argparse.ArgumentParser(prog="edgekeys", description=__doc__, parents=[options])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the gRPC API")
    config.add_arguments(serve)
    client.add_commands(commands, options)
    arguments = parser.parse_args(argv)
    if arguments.command != "serve":
        return client.run(arguments)
    try:
        settings = config.from_arguments(arguments)
        _configure_logging(settings)
        if settings.workers > 1:
            return _supervise(settings)
        asyncio.run(_serve(settings))
    except (ValueError, RuntimeError) as error:
        print(f"edgekeys: cannot serve: {error}", file=sys.stderr)
        return 2
    except (sqlalchemy.exc.OperationalError, persistence.OperationalError) as error:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        print(f"edgekeys: cannot serve: the database is unreachable: {reason}", file=sys.stderr)
        return 2
    return 0


async def _serve(settings: config.Settings, supervisor: int | None = None) -> None:
    server = FollowerServer(settings) if settings.follow else EdgeKeysServer(settings)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    if supervisor is not None:
        orphaned = asyncio.create_task(_until_orphaned(supervisor))
        orphaned.add_done_callback(lambda _: stopping.set())
    await stopping.wait()
    log.info("stopping: finishing requests in flight")
    await server.stop()


def _supervise(settings: config.Settings) -> int:
    """Run `workers` server processes on one address (SO_REUSEPORT: the kernel spreads
    connections over them), replace any that dies, and stop them all on a signal."""
    if settings.address.endswith(":0"):
        raise ValueError("--workers needs a fixed port, not :0")
    spawn = multiprocessing.get_context("spawn")

    def start() -> multiprocessing.process.BaseProcess:
        worker = spawn.Process(target=_worker, args=(settings, os.getpid()), daemon=False)
        worker.start()
        return worker

    workers = [start() for _ in range(settings.workers)]
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
                workers[i] = start()
        time.sleep(0.2)
    for worker in workers:
        worker.join()
    return max(worker.exitcode or 0 for worker in workers)


def _worker(settings: config.Settings, supervisor: int) -> None:
    _configure_logging(settings)
    asyncio.run(_serve(settings, supervisor))


async def _until_orphaned(supervisor: int) -> None:
    """Returns when the supervisor is gone (killed with no chance to stop its workers):
    a worker must not keep serving the port on its own."""
    while os.getppid() == supervisor:
        await asyncio.sleep(1)
    log.error("the supervisor (pid %d) is gone: stopping", supervisor)


def _configure_logging(settings: config.Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
