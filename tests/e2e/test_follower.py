"""`edgekeys serve --follow`: a real edge follower process fed by a real upstream. It
validates what the upstream holds, keeps validating through a short outage, fails
closed after its max staleness, and resumes (not starts over) when the upstream returns."""

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, replication_pb2_grpc, validation_pb2_grpc
from edgekeys.v1 import replication_pb2 as rpb
from edgekeys.v1 import validation_pb2 as vpb
from edgekeys.vendor.envoy.service.auth.v3 import external_auth_pb2_grpc
from edgekeys.vendor.envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from edgekeys.vendor.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from tests.e2e.conftest import BIN, ROOT, ServeProcess, free_port

T = TypeVar("T")
PROJECT = "projects/acme"
LLAMA = f"{PROJECT}/deployments/llama"
MISTRAL = f"{PROJECT}/deployments/mistral"
MAX_STALENESS = 3.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Node:
    """A running `edgekeys serve`, store-backed or following, with client stubs."""

    def __init__(self, process: ServeProcess, log: Path | None = None) -> None:
        self.process = process
        self.log = log
        self.channel = grpc.insecure_channel(process.address)
        self.keys = api_keys_pb2_grpc.ApiKeyServiceStub(self.channel)
        self.validation = validation_pb2_grpc.ValidationServiceStub(self.channel)
        self.replication = replication_pb2_grpc.ReplicationServiceStub(self.channel)
        self.authorization = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def start(self, wait: bool = True) -> None:
        if self.log is None:
            self.process.start()
            return
        with self.log.open("ab") as log:
            self.process.process = subprocess.Popen(
                [BIN / "edgekeys", "serve"], env=self.process.env, cwd=ROOT, stderr=log
            )
        if wait:
            self.process.wait_serving()

    def kill(self) -> None:
        process = self.process.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def verdict(self, secret: str, deployment: str = LLAMA) -> "vpb.Verdict":
        request = vpb.ValidateApiKeyRequest(secret=secret, deployment=deployment)
        reply: vpb.ValidateApiKeyResponse = self.validation.ValidateApiKey(request, timeout=5)
        return reply.verdict

    def health_or_code(self) -> "health_pb2.HealthCheckResponse.ServingStatus | grpc.StatusCode":
        """The health status; the error's code while the process is not listening yet."""
        try:
            return self.health()
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code

    def health(self) -> "health_pb2.HealthCheckResponse.ServingStatus":
        request = health_pb2.HealthCheckRequest()
        status: health_pb2.HealthCheckResponse.ServingStatus = self.health_stub.Check(
            request, timeout=5
        ).status
        return status

    def status(self) -> rpb.GetReplicaStatusResponse:
        reply: rpb.GetReplicaStatusResponse = self.replication.GetReplicaStatus(
            rpb.GetReplicaStatusRequest(), timeout=5
        )
        return reply

    def check(self, secret: str) -> CheckResponse:
        request = CheckRequest(
            attributes=AttributeContext(
                request=AttributeContext.Request(
                    http=AttributeContext.HttpRequest(headers={"x-api-key": secret})
                ),
                context_extensions={"deployment": LLAMA},
            )
        )
        reply: CheckResponse = self.authorization.Check(request, timeout=5)
        return reply

    def create(self, *deployments: str) -> pb.CreateApiKeyResponse:
        reply: pb.CreateApiKeyResponse = self.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=PROJECT,
                api_key=pb.ApiKey(display_name="at the edge", deployments=list(deployments)),
            ),
            timeout=10,
        )
        return reply

    def log_text(self) -> str:
        return self.log.read_text() if self.log else ""

    def close(self) -> None:
        self.channel.close()
        self.kill()


@pytest.fixture
def nodes() -> Iterator[Callable[[ServeProcess, Path | None], Node]]:
    made: list[Node] = []

    def make(process: ServeProcess, log: Path | None = None) -> Node:
        node = Node(process, log)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def follower_process(tmp_path: Path, upstream: ServeProcess) -> ServeProcess:
    # A database URL is set only to show that a follower never opens it.
    return ServeProcess(
        tmp_path / "follower.db",
        follow=upstream.address,
        max_staleness=str(MAX_STALENESS),
        log_level="INFO",
    )


def eventually(probe: Callable[[], T], expected: T, within: float = 20) -> float:
    """Seconds until `probe()` returns `expected`; fails after `within` seconds."""
    start = time.monotonic()
    while (found := probe()) != expected:
        assert time.monotonic() - start < within, f"still {found!r}, not {expected!r}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_an_edge_follower_serves_fails_closed_when_cut_off_and_resumes(
    tmp_path: Path, nodes: Callable[[ServeProcess, Path | None], Node]
) -> None:
    database = tmp_path / "edgekeys.db"
    upstream = nodes(ServeProcess(database), None)
    upstream.start()
    kept = upstream.create(LLAMA, MISTRAL)
    revoked_before = upstream.create(LLAMA)
    revoked_while_cut_off = upstream.create(LLAMA)

    follower = nodes(follower_process(tmp_path, upstream.process), tmp_path / "follower.log")
    follower.start()

    # It validates what the upstream holds, and follows its changes.
    assert follower.verdict(kept.secret) == vpb.VERDICT_ALLOWED
    assert follower.verdict(kept.secret, MISTRAL) == vpb.VERDICT_ALLOWED
    later = upstream.create(LLAMA)
    eventually(lambda: follower.verdict(later.secret), vpb.VERDICT_ALLOWED)
    upstream.keys.DetachDeployment(
        pb.DetachDeploymentRequest(name=kept.api_key.name, deployment=MISTRAL)
    )
    eventually(lambda: follower.verdict(kept.secret, MISTRAL), vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED)
    upstream.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=revoked_before.api_key.name))
    eventually(lambda: follower.verdict(revoked_before.secret), vpb.VERDICT_NOT_FOUND)

    # It has no database and manages no keys.
    with pytest.raises(grpc.RpcError) as error:
        follower.keys.GetApiKey(pb.GetApiKeyRequest(name=kept.api_key.name), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not (tmp_path / "follower.db").exists()

    head = upstream.status().head_position
    eventually(lambda: follower.status().position, head)
    status = follower.status()
    assert (status.role, status.upstream, status.serving, status.lag) == (
        "follower",
        upstream.process.address,
        True,
        0,
    )

    # The upstream disappears: the follower keeps answering, within its max staleness...
    upstream.kill()
    cut_off = time.monotonic()
    assert follower.verdict(kept.secret) == vpb.VERDICT_ALLOWED
    assert follower.health() == SERVING
    # ...then fails closed.
    eventually(follower.health, NOT_SERVING, within=MAX_STALENESS + 10)
    served_for = time.monotonic() - cut_off
    # The last heartbeat came at most a second before the kill; health is checked twice a second.
    assert MAX_STALENESS - 1.5 <= served_for <= MAX_STALENESS + 3
    with pytest.raises(grpc.RpcError) as error:
        follower.verdict(kept.secret)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"has not heard from its upstream {upstream.process.address}" in str(
        error.value.details()
    )
    assert "failing closed" in str(error.value.details())
    denied = follower.check(kept.secret)
    assert denied.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert denied.denied_response.status.code == 503
    assert not follower.status().serving

    # A key is revoked while the follower is cut off: through another process on the
    # same store, since its upstream is down.
    writer = nodes(ServeProcess(database), None)
    writer.start()
    writer.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=revoked_while_cut_off.api_key.name))
    writer.close()

    # The upstream returns on the same port and store: the follower resumes from its
    # position (no second snapshot) and serves again, the revocation included.
    upstream.start()
    eventually(follower.health, SERVING)
    eventually(lambda: follower.verdict(revoked_while_cut_off.secret), vpb.VERDICT_NOT_FOUND)
    assert follower.verdict(kept.secret) == vpb.VERDICT_ALLOWED
    log = follower.log_text()
    assert log.count("index loaded from") == 1, log
    assert f"resumed following {upstream.process.address} after position {head}" in log, log
    eventually(lambda: follower.status().position, upstream.status().head_position)


def test_a_follower_waits_not_serving_for_an_upstream_that_is_not_there_yet(
    tmp_path: Path, nodes: Callable[[ServeProcess, Path | None], Node]
) -> None:
    upstream = nodes(ServeProcess(tmp_path / "edgekeys.db"), None)
    follower = nodes(follower_process(tmp_path, upstream.process), tmp_path / "follower.log")
    follower.start(wait=False)
    eventually(follower.health_or_code, NOT_SERVING)
    with pytest.raises(grpc.RpcError) as error:
        follower.verdict("edk_" + "0" * 49)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "has not yet received the index from its upstream" in str(error.value.details())

    upstream.start()
    created = upstream.create(LLAMA)
    eventually(follower.health, SERVING)
    eventually(lambda: follower.verdict(created.secret), vpb.VERDICT_ALLOWED)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--follow", "nowhere"], "--follow must be HOST:PORT"),
        (["--follow", "127.0.0.1:99999"], "--follow must be HOST:PORT"),
        (["--follow", f"127.0.0.1:{free_port()}", "--max-staleness", "0"], "must be positive"),
    ],
)
def test_bad_follower_flags_are_one_clear_line(flags: list[str], expected: str) -> None:
    done = subprocess.run(
        [BIN / "edgekeys", "serve", "--address", "127.0.0.1:0", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("edgekeys: cannot serve: ")
    assert expected in done.stderr
