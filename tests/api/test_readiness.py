"""A replica says NOT_SERVING (grpc.health.v1) until its projections have caught up
with the store as it was at start: a load balancer never sends it a key it has not
read yet."""

import asyncio
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgekeys.v1 import validation_pb2 as vpb
from edgekeys.v1 import validation_pb2_grpc
from projections.projector import Projector
from service.runtime.config import Settings
from service.runtime.server import Server
from tests.conftest import FakeClock, RunningServer
from tests.e2e.conftest import free_port

LLAMA = "projects/acme/deployments/llama"


def test_a_replica_is_not_serving_until_its_projections_have_caught_up(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "edgekeys.db"
    seeded = RunningServer(database=database, clock=clock).start()
    secret = seeded.create().secret
    seeded.stop()

    caught_up = threading.Event()
    catch_up = Projector.catch_up

    def held_back(projector: Projector) -> int:
        caught_up.wait(30)
        return catch_up(projector)

    monkeypatch.setattr(Projector, "catch_up", held_back)
    address = f"127.0.0.1:{free_port()}"
    settings = Settings(address=address, database_url=f"sqlite:///{database}", http_address="off")
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def build() -> Server:  # on the loop that will serve it
        return Server(settings, clock=clock)

    server = asyncio.run_coroutine_threadsafe(build(), loop).result(30)
    starting = asyncio.run_coroutine_threadsafe(server.start(), loop)
    try:
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()
            reply = health.Check(request, wait_for_ready=True, timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            caught_up.set()
            starting.result(30)
            assert health.Check(request).status == health_pb2.HealthCheckResponse.SERVING
            validation = validation_pb2_grpc.ValidationServiceStub(channel)
            verdict = validation.ValidateApiKey(
                vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)
            ).verdict
            assert verdict == vpb.VERDICT_ALLOWED
    finally:
        caught_up.set()
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
