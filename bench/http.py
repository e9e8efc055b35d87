"""`make bench`: the HTTP listener beside gRPC, each figure a ratio against a baseline
measured in the same run on the same `edgekeys serve` (these machines are shared and
noisy).

One real `edgekeys serve`, HTTP listener on (its default), its log at the default level
into a file. Load: h2load, 128 requests in flight either way: gRPC as `bench.run` drives
it (4 HTTP/2 connections x 32 streams), HTTP/1.1 as `h2load --h1` over 128 keep-alive
connections, one request at a time on each (no pipelining). Rounds alternate every
scenario; each figure is the median of its rounds. The last two scenarios run while a
second h2load offers the HTTP listener a fixed load of validations (`--http-load`).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from grpc_health.v1 import health_pb2

from bench.run import (
    HEALTH,
    LLAMA,
    VALIDATE,
    create_key,
    grpc_frame,
    h2load_command,
    h2load_rate,
    machine,
)
from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from tests.e2e.conftest import BIN, ROOT, ServeProcess

GET = "/edgekeys.v1.ApiKeyService/GetApiKey"
JSON_HEADERS = ("content-type: application/json",)
HTTP_CONNECTIONS = 128  # = gRPC's 4 connections x 32 streams in flight


class LoggedServe(ServeProcess):
    """`edgekeys serve` as bench.run starts it, its log (one line per HTTP request at
    the default level) into a file instead of this terminal."""

    def __init__(self, database: Path, log: Path) -> None:
        super().__init__(database)
        self.log = log
        self.log_stream: IO[bytes] | None = None

    def start(self) -> None:
        self.log_stream = self.log.open("wb")
        self.process = subprocess.Popen(
            [BIN / "edgekeys", "serve"], env=self.env, cwd=ROOT, stderr=self.log_stream
        )
        self.wait_serving()

    def stop(self) -> int:
        code = super().stop()
        if self.log_stream:
            self.log_stream.close()
        return code


@dataclass(frozen=True)
class Load:
    """One h2load run: a gRPC method (HTTP/2) or an HTTP/1.1 route."""

    url: str
    payload: Path | None
    http1: bool

    def command(self, seconds: int, rate: float = 0) -> list[str]:
        if self.http1:
            headers = JSON_HEADERS if self.payload else ()
            connections, streams = HTTP_CONNECTIONS, 1
            if rate:  # a steady background: a few connections are enough
                connections = 4
            return h2load_command(
                self.url,
                seconds,
                self.payload,
                headers,
                rate=rate,
                connections=connections,
                streams=streams,
                http1=True,
            )
        return h2load_command(self.url, seconds, self.payload, rate=rate)


@dataclass(frozen=True)
class Scenario:
    load: Load
    background: Load | None = None  # run beside it, at `background_rate` requests/s


def measure(scenario: Scenario, seconds: int, background_rate: float) -> tuple[float, float | None]:
    """The scenario's requests/s, and the background's (None without one)."""
    beside = None
    if scenario.background is not None:
        # Started first and stopped last: it covers the whole measured window.
        command = scenario.background.command(seconds + 2, background_rate)
        beside = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
    try:
        output = subprocess.run(
            scenario.load.command(seconds), capture_output=True, text=True, check=True
        ).stdout
    finally:
        background_output = beside.communicate()[0] if beside else ""
    rate = h2load_rate(output)
    if beside is None:
        return rate, None
    assert beside.returncode == 0, background_output
    return rate, h2load_rate(background_output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--http-load",
        type=float,
        default=1000,
        help="HTTP validations/s offered beside the loaded gRPC scenarios (default 1000)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    if shutil.which("h2load") is None:
        print("bench: h2load not found (Debian package nghttp2-client; `make bench` installs it)")
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="edgekeys-bench-http-"))
    server = LoggedServe(workdir / "edgekeys.db", workdir / "serve.log")
    server.start()
    figures: dict[str, Any] = {"machine": machine(), "date": datetime.now(UTC).isoformat()}
    try:
        name, secret = create_key(server.address)
        files = {
            "health": grpc_frame(health_pb2.HealthCheckRequest()),
            "get": grpc_frame(pb.GetApiKeyRequest(name=name)),
            "validate": grpc_frame(vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)),
            "validate.json": json.dumps({"secret": secret}).encode(),
        }
        paths = {}
        for file, content in files.items():
            paths[file] = workdir / file
            paths[file].write_bytes(content)
        grpc = f"http://{server.address}"
        http = f"http://127.0.0.1:{server.http_port}"
        http_validate = Load(f"{http}/v1/{LLAMA}:validateApiKey", paths["validate.json"], True)
        grpc_health = Load(grpc + HEALTH, paths["health"], False)
        grpc_validate = Load(grpc + VALIDATE, paths["validate"], False)
        scenarios = {
            "grpc_health": Scenario(grpc_health),
            "http_healthz": Scenario(Load(f"{http}/healthz", None, True)),
            "grpc_get": Scenario(Load(grpc + GET, paths["get"], False)),
            "http_get": Scenario(Load(f"{http}/v1/{name}", None, True)),
            "grpc_validate": Scenario(grpc_validate),
            "http_validate": Scenario(http_validate),
            "grpc_health_under_http": Scenario(grpc_health, http_validate),
            "grpc_validate_under_http": Scenario(grpc_validate, http_validate),
        }
        print(
            f"throughput (h2load; gRPC 4 connections x 32 streams, HTTP/1.1 {HTTP_CONNECTIONS}"
            f" connections; background {options.http_load:,.0f} HTTP validations/s)",
            file=sys.stderr,
        )
        rates: dict[str, list[float]] = {scenario: [] for scenario in scenarios}
        backgrounds: list[float] = []
        for round_number in range(options.rounds):
            for label, scenario in scenarios.items():
                rate, background = measure(scenario, options.seconds, options.http_load)
                rates[label].append(rate)
                if background is not None:
                    backgrounds.append(background)
            print(
                f"  round {round_number + 1}: "
                + ", ".join(f"{n} {r[-1]:,.0f}/s" for n, r in rates.items()),
                file=sys.stderr,
            )
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    median = {label: statistics.median(values) for label, values in rates.items()}
    checks = [
        ("HTTP GET /healthz / gRPC Health.Check", "http_healthz", "grpc_health", 1.0),
        ("HTTP GET /v1/{name} / gRPC GetApiKey", "http_get", "grpc_get", 0.8),
        ("HTTP POST :validateApiKey / gRPC ValidateApiKey", "http_validate", "grpc_validate", 0.8),
        ("gRPC GetApiKey / gRPC Health.Check", "grpc_get", "grpc_health", 0.6),
        ("gRPC ValidateApiKey / Health.Check, listener on", "grpc_validate", "grpc_health", 0.85),
        (
            "gRPC ValidateApiKey / Health.Check, under HTTP load",
            "grpc_validate_under_http",
            "grpc_health_under_http",
            0.85,
        ),
    ]
    print(f"\nedgekeys bench.http: {figures['machine']}, {figures['date'][:10]}")
    print(f"{'figure':<54} {'ratio':>6} {'target':>7}  rounds")
    ratios = {}
    for label, measured, baseline, target in checks:
        ratio = median[measured] / median[baseline]
        ratios[label] = ratio
        each = ", ".join(
            f"{m / b:.2f}" for m, b in zip(rates[measured], rates[baseline], strict=True)
        )
        verdict = "PASS" if ratio >= target else "FAIL"
        print(f"{label:<54} {ratio:>6.2f} {'≥ ' + str(target):>7}  {verdict} ({each})")
    for label, rate in median.items():
        print(f"  {label:<52} {rate:>10,.0f} req/s")
    background = statistics.median(backgrounds)
    print(
        f"  {'HTTP validations beside (offered ' + f'{options.http_load:,.0f})':<52} "
        f"{background:>10,.0f} req/s"
    )
    figures.update(
        requests_per_second=median,
        rounds=rates,
        background_http_validations_per_second=background,
        ratios=ratios,
    )
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
