"""Real processes for end-to-end tests: `edgekeys serve`, started as the README does."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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
        self.env = {
            **os.environ,
            "EDGEKEYS_ADDRESS": self.address,
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
        with grpc.insecure_channel(self.address) as channel:
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
