"""`make bench`: the gateway hot path, each figure a ratio against a baseline measured
in the same run on the same server (these machines are shared and noisy).

Load: h2load, 4 connections x 32 streams, against `edgekeys serve` in its default
configuration (only address and database file moved). Rounds interleave the
scenarios; each figure is the median of its rounds.
"""

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from edgekeys.vendor.envoy.config.core.v3.address_pb2 import Address, SocketAddress
from edgekeys.vendor.envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from edgekeys.vendor.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from service.security import callers
from tests.e2e.conftest import ServeProcess

LLAMA = "projects/acme/deployments/llama-3"
HEALTH = "/grpc.health.v1.Health/Check"
VALIDATE = "/edgekeys.v1.ValidationService/ValidateApiKey"
VALIDATE_MANY = "/edgekeys.v1.ValidationService/ValidateApiKeys"
CHECK = "/envoy.service.auth.v3.Authorization/Check"
BATCH = 100
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def grpc_frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(body)) + body


def h2load_command(
    url: str,
    seconds: int,
    payload: Path | None = None,
    headers: Sequence[str] = GRPC_HEADERS,
    log_file: Path | None = None,
    rate: float = 0,
    connections: int = 4,
    streams: int = 32,
    http1: bool = False,
) -> list[str]:
    """h2load's command line: `payload` is POSTed (else a GET); `streams` per connection
    (with `http1`, requests pipelined on each of its HTTP/1.1 connections)."""
    command = ["h2load", "-D", str(seconds), "--warm-up-time", "1"]
    command += ["-c", str(connections), "-m", str(streams)]
    if http1:
        command.append("--h1")
    for header in headers:
        command += ["-H", header]
    if log_file:
        command += ["--log-file", str(log_file)]
    if rate:
        command += ["--rps", str(max(1, round(rate / connections)))]  # per connection
    if payload is not None:
        command += ["-d", str(payload)]
    return [*command, url]


def h2load_rate(output: str) -> float:
    """Requests per second from h2load's report; every request must have succeeded."""
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", output)
    assert done and done[2] == done[3], output
    measured = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
    assert measured, output
    return float(measured[1])


def h2load(
    address: str,
    method: str,
    payload: Path,
    seconds: int,
    token: str = "",
    log_file: Path | None = None,
    rate: float = 0,
) -> float:
    """Requests per second of a unary gRPC method; every request must succeed.
    `log_file`: h2load's per-request log (start µs, status, duration µs); `rate`:
    requests per second to send in all (0: as fast as the server answers)."""
    headers = [*GRPC_HEADERS, f"authorization: Bearer {token}"] if token else GRPC_HEADERS
    command = h2load_command(f"http://{address}{method}", seconds, payload, headers, log_file, rate)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return h2load_rate(output)


def latencies(address: str, method: str, request: bytes, calls: int) -> list[float]:
    """Seconds per call, one call at a time (concurrency 1)."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method)
        for _ in range(200):  # warm up
            call(request)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            call(request)
            times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def create_key(address: str, token: str = "") -> tuple[str, str]:
    with grpc.insecure_channel(address) as channel:
        created = api_keys_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
            pb.CreateApiKeyRequest(
                parent="projects/acme",
                api_key=pb.ApiKey(display_name="bench", deployments=[LLAMA]),
            ),
            metadata=[("authorization", f"Bearer {token}")] if token else None,
        )
    return created.api_key.name, created.secret


def check_request(secret: str) -> CheckRequest:
    """A CheckRequest shaped like the ones Envoy sends for an OpenAI client call."""
    headers = {
        ":authority": "127.0.0.1:10000",
        ":method": "POST",
        ":path": "/llama-3/v1/chat/completions",
        ":scheme": "http",
        "accept": "application/json",
        "authorization": "Bearer notused",
        "content-length": "74",
        "content-type": "application/json",
        "user-agent": "OpenAI/Python 3.57.0",
        "x-api-key": secret,
        "x-forwarded-proto": "http",
        "x-request-id": "0d2c3a1e-7a7b-4a37-9d55-b1f1a9a1f3c2",
    }
    peer = AttributeContext.Peer(
        address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=53412))
    )
    return CheckRequest(
        attributes=AttributeContext(
            source=peer,
            request=AttributeContext.Request(
                http=AttributeContext.HttpRequest(
                    id="1234", method="POST", path="/llama-3/v1/chat/completions", headers=headers
                )
            ),
            context_extensions={"deployment": LLAMA},
        )
    )


def propagation_delays(address: str, changes: int) -> list[float]:
    """Seconds from a write's acknowledgement until 8 connections (spread over the
    workers by the kernel) all answer accordingly."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(address, options=options) for _ in range(8)]
    validate = [
        c.unary_unary(
            VALIDATE,
            vpb.ValidateApiKeyRequest.SerializeToString,
            vpb.ValidateApiKeyResponse.FromString,
        )
        for c in channels
    ]
    keys = api_keys_pb2_grpc.ApiKeyServiceStub(channels[0])
    delays = []
    for i in range(changes):
        # Writes land at random moments of the other worker's poll cycle, as in life.
        time.sleep(random.uniform(0, 0.06))
        if i % 2 == 0:
            created = keys.CreateApiKey(
                pb.CreateApiKeyRequest(
                    parent="projects/acme", api_key=pb.ApiKey(display_name="p", deployments=[LLAMA])
                )
            )
            name, secret, wanted = created.api_key.name, created.secret, vpb.VERDICT_ALLOWED
            acknowledged = time.perf_counter()
        else:
            keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=name))
            wanted = vpb.VERDICT_NOT_FOUND
            acknowledged = time.perf_counter()
        request = vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)
        pending = set(range(len(channels)))
        while pending:
            pending = {c for c in pending if validate[c](request).verdict != wanted}
            if time.perf_counter() - acknowledged > 10:
                raise AssertionError("a change did not propagate within 10 s")
        delays.append(time.perf_counter() - acknowledged)
    for channel in channels:
        channel.close()
    return delays


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def median_rates(
    scenarios: dict[str, tuple[str, str, Path, str]], rounds: int, seconds: int
) -> dict[str, float]:
    """Scenarios: name → (address, method, payload file, bearer token or "")."""
    rates: dict[str, list[float]] = {name: [] for name in scenarios}
    for round_number in range(rounds):
        for name, (address, method, payload, token) in scenarios.items():
            rates[name].append(h2load(address, method, payload, seconds, token))
        print(
            f"  round {round_number + 1}: "
            + ", ".join(f"{n} {r[-1]:,.0f}/s" for n, r in rates.items()),
            file=sys.stderr,
        )
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--latency-calls", type=int, default=3000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    if shutil.which("h2load") is None:
        print("bench: h2load not found (Debian package nghttp2-client; `make bench` installs it)")
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="edgekeys-bench-"))
    one = ServeProcess(workdir / "one.db")
    two = ServeProcess(workdir / "two.db", workers="2")
    token, digest = callers.new_token()
    (workdir / "callers.toml").write_text(
        callers.caller_table("bench", digest, callers.ROLES, ["*"], None)
    )
    guarded = ServeProcess(workdir / "guarded.db", callers_file=str(workdir / "callers.toml"))
    servers = (one, two, guarded)
    for server in servers:
        server.start()
    figures: dict[str, Any] = {"machine": machine(), "date": datetime.now(UTC).isoformat()}
    checks: list[tuple[str, float, float]] = []
    try:
        _, secret = create_key(one.address)
        _, secret_two = create_key(two.address)
        _, secret_guarded = create_key(guarded.address, token)
        valid = vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)
        payloads: dict[str, Message] = {
            "health": health_pb2.HealthCheckRequest(),
            "validate": valid,
            "check": check_request(secret),
            "validate_many": vpb.ValidateApiKeysRequest(requests=[valid] * BATCH),
            "validate_two": vpb.ValidateApiKeyRequest(secret=secret_two, deployment=LLAMA),
            "validate_token": vpb.ValidateApiKeyRequest(secret=secret_guarded, deployment=LLAMA),
        }
        files = {}
        for name, message in payloads.items():
            files[name] = workdir / f"{name}.bin"
            files[name].write_bytes(grpc_frame(message))

        print("throughput (h2load, 4 connections x 32 streams)", file=sys.stderr)
        rates = median_rates(
            {
                "health": (one.address, HEALTH, files["health"], ""),
                "validate": (one.address, VALIDATE, files["validate"], ""),
                "check": (one.address, CHECK, files["check"], ""),
                "validate_many": (one.address, VALIDATE_MANY, files["validate_many"], ""),
                "validate_2_workers": (two.address, VALIDATE, files["validate_two"], ""),
                "validate_with_token": (guarded.address, VALIDATE, files["validate_token"], token),
            },
            options.rounds,
            options.seconds,
        )
        figures["requests_per_second"] = rates
        checks += [
            ("ValidateApiKey / Health.Check, req/s", rates["validate"] / rates["health"], 0.85),
            ("Authorization.Check / Health.Check, req/s", rates["check"] / rates["health"], 0.8),
            (
                f"ValidateApiKeys x{BATCH} / ValidateApiKey, validations/s",
                rates["validate_many"] * BATCH / rates["validate"],
                20,
            ),
            (
                "2 workers / 1 worker, ValidateApiKey req/s",
                rates["validate_2_workers"] / rates["validate"],
                0,
            ),
            (
                "ValidateApiKey with a caller token / without, req/s",
                rates["validate_with_token"] / rates["validate"],
                0.9,
            ),
        ]

        print("latency at concurrency 1", file=sys.stderr)
        health_request = health_pb2.HealthCheckRequest().SerializeToString()
        samples: dict[str, list[float]] = {"health": [], "validate": []}
        for _ in range(3):  # interleaved blocks
            samples["health"] += latencies(
                one.address, HEALTH, health_request, options.latency_calls // 3
            )
            samples["validate"] += latencies(
                one.address, VALIDATE, valid.SerializeToString(), options.latency_calls // 3
            )
        figures["latency_ms"] = {
            name: {"p50": percentile(v, 0.5) * 1e3, "p99": percentile(v, 0.99) * 1e3}
            for name, v in samples.items()
        }

        print("propagation across 2 workers", file=sys.stderr)
        delays = propagation_delays(two.address, options.changes)
        figures["propagation_ms"] = {
            "p50": percentile(delays, 0.5) * 1e3,
            "p99": percentile(delays, 0.99) * 1e3,
            "changes": len(delays),
        }
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nedgekeys bench: {figures['machine']}, {figures['date'][:10]}")
    print(f"{'figure':<52} {'ratio':>8} {'target':>8}")
    for label, ratio, target in checks:
        verdict = "" if not target else ("ok" if ratio >= target else "BELOW")
        shown = f"≥ {target}" if target else "-"
        print(f"{label:<52} {ratio:>8.2f} {shown:>8} {verdict}")
    for name, rate in rates.items():
        print(f"  {name:<50} {rate:>10,.0f} req/s")
    for name, values in figures["latency_ms"].items():
        print(f"latency c=1 {name:<40} p50 {values['p50']:.3f} ms  p99 {values['p99']:.3f} ms")
    propagation = figures["propagation_ms"]
    print(
        f"propagation across workers over {propagation['changes']} changes: "
        f"p50 {propagation['p50']:.1f} ms  p99 {propagation['p99']:.1f} ms (target p99 ≤ 100 ms)"
    )
    figures["ratios"] = {label: ratio for label, ratio, _ in checks}
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
