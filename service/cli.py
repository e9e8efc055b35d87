"""`edgekeys` command line."""

import argparse
import asyncio
import logging
import signal
import sys

from service import config
from service.server import EdgeKeysServer

log = logging.getLogger("edgekeys")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekeys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the gRPC API")
    config.add_arguments(serve)
    arguments = parser.parse_args(argv)
    settings = config.from_arguments(arguments)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(_serve(settings))
    except (ValueError, RuntimeError) as error:
        log.error("cannot serve: %s", error)
        return 2
    return 0


async def _serve(settings: config.Settings) -> None:
    server = EdgeKeysServer(settings)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("stopping: finishing requests in flight")
    await server.stop()


if __name__ == "__main__":
    sys.exit(main())
