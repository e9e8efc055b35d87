"""Graceful shutdown of a real `edgekeys serve`: on SIGTERM health turns NOT_SERVING,
requests in flight finish, nothing is written half way, and the next start is clean."""

import contextlib
import signal
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, audit_pb2_grpc
from edgekeys.v1 import audit_pb2 as apb
from tests.e2e.conftest import LLAMA, PROJECT, Node, ServeProcess

WRITERS = 6


def test_sigterm_under_writes_finishes_what_it_acknowledged_and_restarts_clean(
    tmp_path: Path,
) -> None:
    log = tmp_path / "edgekeys.log"
    node = Node(ServeProcess(tmp_path / "edgekeys.db", shutdown_grace="10"), log=log)
    node.start()
    process = node.process.process
    assert process is not None
    acknowledged: list[str] = []
    refused: list[grpc.StatusCode] = []
    statuses: list[int] = []
    stop = threading.Event()

    def write() -> None:
        with grpc.insecure_channel(node.process.address) as channel:
            keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
            while not stop.is_set():
                request = pb.CreateApiKeyRequest(
                    parent=PROJECT, api_key=pb.ApiKey(display_name="k", deployments=[LLAMA])
                )
                try:
                    acknowledged.append(keys.CreateApiKey(request, timeout=15).api_key.name)
                except grpc.RpcError as error:
                    refused.append(error.code())
                    return

    def watch_health() -> None:
        with grpc.insecure_channel(node.process.address) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="edgekeys.v1.ApiKeyService"), timeout=30
            )
            with contextlib.suppress(grpc.RpcError):  # ends when the server stops
                statuses.extend(reply.status for reply in stream)

    threads = [threading.Thread(target=write) for _ in range(WRITERS)]
    threads.append(threading.Thread(target=watch_health))
    for thread in threads:
        thread.start()
    while len(acknowledged) < 50:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert process.wait(timeout=20) == 0
    stopped_in = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(20)

    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING, 2)
    assert statuses[:1] == [serving] and not_serving in statuses
    # new calls after the signal are refused (UNAVAILABLE, or CANCELLED for one that
    # slipped in as the server stopped), never INTERNAL
    assert set(refused) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert stopped_in < 5  # the health watch did not hold it to its 10 s grace

    node.start()  # the same store, clean
    try:
        listed = node.keys.ListApiKeys(pb.ListApiKeysRequest(parent=PROJECT, page_size=1000))
        names = {key.name for key in listed.api_keys}
        assert set(acknowledged) <= names  # every acknowledged create is there
        audit = audit_pb2_grpc.AuditServiceStub(node.channel)
        events = audit.ListEvents(apb.ListEventsRequest(parent=PROJECT, page_size=1000))
        created = [e.api_key for e in events.events if e.event_type == "KeyCreated"]
        assert sorted(created) == sorted(names)  # catalog and log agree: nothing half done
        assert audit.VerifyAuditLog(apb.VerifyAuditLogRequest()).ok
    finally:
        node.process.stop()
        node.channel.close()
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("stopped") >= 1
