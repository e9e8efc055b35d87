"""`edgekeys serve --workers 2`: two processes on one address, one store."""

import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, validation_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from tests.api.test_metrics import parsed, value
from tests.e2e.conftest import ServeProcess, free_port

LLAMA = "projects/acme/deployments/llama"
CONNECTIONS = 8  # spread by the kernel over both workers: all on one has p < 1%


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[ServeProcess]:
    metrics = free_port()  # worker i serves its metrics on this port + i
    process = ServeProcess(
        tmp_path / "edgekeys.db", workers="2", metrics_address=f"127.0.0.1:{metrics}"
    )
    process.start()
    yield process
    if process.process and process.process.poll() is None:
        process.stop()


def connections(address: str) -> list[grpc.Channel]:
    # A local subchannel pool gives every channel its own TCP connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    return [grpc.insecure_channel(address, options=options) for _ in range(CONNECTIONS)]


def verdicts(channels: list[grpc.Channel], secret: str) -> set[int]:
    request = vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)
    return {
        validation_pb2_grpc.ValidationServiceStub(c).ValidateApiKey(request).verdict
        for c in channels
    }


def eventually(condition: Callable[[], bool], timeout: float = 10) -> float:
    """Seconds until `condition` held (generous timeout: shared, noisy machines)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "did not propagate"
        time.sleep(0.005)
    return time.monotonic() - start


def test_every_worker_follows_writes_made_through_any_other(workers: ServeProcess) -> None:
    channels = connections(workers.address)
    keys = api_keys_pb2_grpc.ApiKeyServiceStub(channels[0])
    request = pb.CreateApiKeyRequest(
        parent="projects/acme", api_key=pb.ApiKey(display_name="w", deployments=[LLAMA])
    )
    deadline = time.monotonic() + 30
    while True:  # the worker reached may still be catching up at start: retry, as documented
        try:
            created = keys.CreateApiKey(request)
            break
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    # No window in the worker that took the write.
    assert verdicts(channels[:1], created.secret) == {vpb.VERDICT_ALLOWED}
    eventually(lambda: verdicts(channels, created.secret) == {vpb.VERDICT_ALLOWED})

    keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=created.api_key.name))
    assert verdicts(channels[:1], created.secret) == {vpb.VERDICT_NOT_FOUND}
    eventually(lambda: verdicts(channels, created.secret) == {vpb.VERDICT_NOT_FOUND})

    listed = {
        len(
            api_keys_pb2_grpc.ApiKeyServiceStub(c)
            .ListApiKeys(pb.ListApiKeysRequest(parent="projects/acme", show_deleted=True))
            .api_keys
        )
        for c in channels
    }
    assert listed == {1}
    for channel in channels:
        channel.close()


def test_sigterm_stops_every_worker(workers: ServeProcess) -> None:
    assert workers.stop() == 0
    with grpc.insecure_channel(workers.address) as channel, pytest.raises(grpc.RpcError):
        validation_pb2_grpc.ValidationServiceStub(channel).ValidateApiKey(
            vpb.ValidateApiKeyRequest(secret="x", deployment=LLAMA), timeout=1
        )


def serves(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            validation_pb2_grpc.ValidationServiceStub(channel).ValidateApiKey(
                vpb.ValidateApiKeyRequest(secret="x", deployment=LLAMA), timeout=1
            )
        except grpc.RpcError:
            return False
    return True


def test_workers_stop_when_their_supervisor_is_killed(workers: ServeProcess) -> None:
    assert workers.process is not None
    assert serves(workers.address)
    workers.process.kill()  # SIGKILL: no chance to stop them itself
    workers.process.wait()
    eventually(lambda: not serves(workers.address), timeout=15)


def eventually_read(url: str, within: float = 20) -> str:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return str(reply.read().decode())
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.1)


def test_each_worker_serves_its_own_metrics_on_the_next_port(workers: ServeProcess) -> None:
    channels = connections(workers.address)
    calls = 40
    for i in range(calls):
        verdicts(channels[i % CONNECTIONS : i % CONNECTIONS + 1], "not a key")
    host, _, port = workers.env["EDGEKEYS_METRICS_ADDRESS"].rpartition(":")
    malformed = []
    for worker in range(2):
        url = f"http://{host}:{int(port) + worker}/metrics"
        samples = parsed(eventually_read(url))  # the second worker may still be starting
        malformed.append(value(samples, "edgekeys_validations_total", verdict="VERDICT_MALFORMED"))
    assert sum(malformed) == calls
    for channel in channels:
        channel.close()


def test_each_worker_serves_http_on_the_next_port(workers: ServeProcess) -> None:
    for worker in range(2):
        url = f"http://127.0.0.1:{workers.http_port + worker}/healthz"
        assert '"SERVING"' in eventually_read(url)
