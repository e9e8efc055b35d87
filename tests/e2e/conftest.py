"""Real processes for end-to-end tests: `edgekeys serve`, started as the README does."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

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
from tests.e2e.model_stub import ModelStub

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROJECT = "projects/acme"
LLAMA = f"{PROJECT}/deployments/llama"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServeProcess:
    def __init__(self, database: Path | str, **settings: str) -> None:
        """`database`: a SQLite file, or a database URL."""
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.http_port = free_port()
        self.env = {
            **os.environ,
            "EDGEKEYS_ADDRESS": self.address,
            "EDGEKEYS_HTTP_ADDRESS": f"127.0.0.1:{self.http_port}",
            "EDGEKEYS_DATABASE_URL": (
                database if isinstance(database, str) else f"sqlite:///{database}"
            ),
            **{f"EDGEKEYS_{name.upper()}": value for name, value in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([BIN / "edgekeys", "serve"], env=self.env, cwd=ROOT)
        self.wait_serving()

    def wait_serving(self, seconds: float = 30) -> None:
        assert self.process is not None
        deadline = time.monotonic() + seconds
        # Retry the connection every 0.1 s, not after grpc's backoff of a second or more.
        fast = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 100)]
        with grpc.insecure_channel(self.address, options=fast) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.process.poll() is None, "edgekeys serve exited at start"
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, "edgekeys serve did not become SERVING"
                time.sleep(0.1)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def served_per_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One `edgekeys serve` shared by a module's tests (each makes keys of its own)."""
    process = ServeProcess(tmp_path_factory.mktemp("served") / "edgekeys.db")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path / "edgekeys.db")
    process.start()
    yield process
    if process.process and process.process.poll() is None:
        process.process.kill()
        process.process.wait()


class EnvoyProcess:
    """deploy/envoy/envoy.yaml, run by a real Envoy, with its ports moved to free ones."""

    EXAMPLE = ROOT / "deploy" / "envoy" / "envoy.yaml"

    def __init__(self, workdir: Path, edgekeys_port: int, model_port: int) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        ports = {
            10000: self.port,
            9901: self.admin_port,
            50051: edgekeys_port,
            8001: model_port,
            8002: model_port,
        }
        config = self.EXAMPLE.read_text()
        for old, new in ports.items():
            config = config.replace(f"port_value: {old} ", f"port_value: {new} ")
        assert all(f"port_value: {p} " in config for p in ports.values())
        self.config = workdir / "envoy.yaml"
        self.config.write_text(config)
        self.log = workdir / "envoy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    BIN / "envoy",
                    "-c",
                    str(self.config),
                    "--use-dynamic-base-id",
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"envoy exited:\n{self.log.read_text()}"
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.admin_port}/ready", timeout=1
                ) as ready:
                    if ready.read().strip() == b"LIVE":
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "envoy did not become ready"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


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

    def create(self, *deployments: str, timeout: float = 10) -> pb.CreateApiKeyResponse:
        reply: pb.CreateApiKeyResponse = self.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=PROJECT,
                api_key=pb.ApiKey(display_name="at the edge", deployments=list(deployments)),
            ),
            timeout=timeout,
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


@contextlib.contextmanager
def envoy_in_front(
    workdir: Path, *, configure: Callable[[str], str] = lambda config: config, **settings: str
) -> Iterator[tuple[ServeProcess, EnvoyProcess]]:
    """`edgekeys serve` with `settings`, a model stub, and Envoy in front of both, its
    configuration (deploy/envoy/envoy.yaml) passed through `configure` first."""
    model = ModelStub()
    edgekeys = ServeProcess(workdir / "edgekeys.db", **settings)
    edgekeys.start()
    envoy = EnvoyProcess(workdir, edgekeys.port, model.port)
    envoy.config.write_text(configure(envoy.config.read_text()))
    try:
        envoy.start()
        yield edgekeys, envoy
    finally:
        envoy.stop()
        edgekeys.stop()
        model.close()


def http_status(url: str, secret: str, source: str = "127.0.0.1") -> int:
    """curl's status for a GET with `x-api-key`, from the loopback address `source`."""
    command = ["curl", "--silent", "--output", "/dev/null", "--write-out", "%{http_code}"]
    command += ["--interface", source, "--header", f"x-api-key: {secret}", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    return int(done.stdout)
