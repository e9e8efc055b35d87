"""`make soak`: mixed load on one `edgekeys serve` for ten minutes, 95% validations and
5% writes: no error, memory flat after warm-up, latency reported minute by minute.

A calibration run measures the most validations/s this machine serves (h2load, 4
connections x 32 streams, on the same cores as the server); the soak then offers a
share of that (`--load`, 40% by default: a rate it sustains with bounded latency, not a
queue that only grows; at 60% the writes' share saturated two cores), over 1,000 live
keys, and one write per 19 validations from four Python client threads, cycling
create, attach, update, detach and delete. Each minute: validations/s and their
p50/p99 (from h2load's per-request log), writes/s and their p99, and the server's RSS.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.run import LLAMA, VALIDATE, grpc_frame, h2load, machine, percentile
from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from tests.e2e.conftest import ServeProcess

MISTRAL = "projects/acme/deployments/mistral"
WRITERS = 4  # client threads, each with its own key's cycle


@dataclass
class Writes:
    """The write load: a create-attach-update-detach-delete cycle, paced."""

    address: str
    per_second: float
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
            steps = [
                lambda name: keys.AttachDeployment(
                    pb.AttachDeploymentRequest(name=name, deployment=MISTRAL)
                ),
                lambda name: keys.UpdateApiKey(
                    pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=name, display_name="soaked"))
                ),
                lambda name: keys.DetachDeployment(
                    pb.DetachDeploymentRequest(name=name, deployment=MISTRAL)
                ),
                lambda name: keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=name)),
            ]
            name, step, due = "", 0, time.monotonic()
            while not self.stop.is_set():
                due += WRITERS / self.per_second  # each of the writers does its share
                time.sleep(max(0.0, due - time.monotonic()))
                started = time.monotonic()
                try:
                    if step == 0:
                        name = keys.CreateApiKey(
                            pb.CreateApiKeyRequest(
                                parent="projects/acme",
                                api_key=pb.ApiKey(display_name="soak", deployments=[LLAMA]),
                            ),
                            timeout=10,
                        ).api_key.name
                    else:
                        steps[step - 1](name)
                except grpc.RpcError as error:
                    self.errors.append(f"{error.code().name}: {error.details()}")
                step = (step + 1) % 5
                self.latencies.append((started, time.monotonic() - started))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def logged_latencies(log: Path) -> list[float]:
    """Seconds per request from h2load's --log-file (start µs, status, duration µs)."""
    return [int(line.split("\t")[2]) / 1e6 for line in log.read_text().splitlines() if line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--write-share", type=float, default=0.05)
    parser.add_argument("--load", type=float, default=0.4, help="share of the calibrated rate")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edgekeys-soak-"))
    server = ServeProcess(workdir / "soak.db")
    server.start()
    assert server.process is not None
    try:
        with grpc.insecure_channel(server.address) as channel:
            keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
            secrets = [
                keys.CreateApiKey(
                    pb.CreateApiKeyRequest(
                        parent="projects/acme",
                        api_key=pb.ApiKey(display_name="live", deployments=[LLAMA]),
                    )
                ).secret
                for _ in range(1000)
            ]
        payload = workdir / "validate.bin"  # h2load sends one body: the first key's
        payload.write_bytes(
            grpc_frame(vpb.ValidateApiKeyRequest(secret=secrets[0], deployment=LLAMA))
        )
        calibrated = h2load(server.address, VALIDATE, payload, 10)
        offered = calibrated * options.load
        writes = Writes(server.address, offered * options.write_share / (1 - options.write_share))
        print(
            f"calibration: {calibrated:,.0f} validations/s at most; offering {offered:,.0f}/s "
            f"and {writes.per_second:,.0f} writes/s",
            file=sys.stderr,
        )
        writers = [threading.Thread(target=writes.run) for _ in range(WRITERS)]
        for writer in writers:
            writer.start()
        rows = []
        for minute in range(1, options.minutes + 1):
            log = workdir / f"minute-{minute}.log"
            began = time.monotonic()
            rate = h2load(server.address, VALIDATE, payload, 60, log_file=log, rate=offered)
            latencies = logged_latencies(log)
            done = [s for t, s in writes.latencies if t >= began]
            rows.append(
                {
                    "minute": minute,
                    "validations_per_s": rate,
                    "validate_p50_ms": percentile(latencies, 0.5) * 1e3,
                    "validate_p99_ms": percentile(latencies, 0.99) * 1e3,
                    "writes_per_s": len(done) / (time.monotonic() - began),
                    "write_p99_ms": percentile(done, 0.99) * 1e3 if done else 0.0,
                    "rss_mib": rss_mib(server.process.pid),
                }
            )
            print(
                "  ".join(f"{k} {v:,.1f}" for k, v in rows[-1].items()),
                file=sys.stderr,
                flush=True,
            )
        writes.stop.set()
        for writer in writers:
            writer.join(30)
    finally:
        server.stop()
    warm = rows[0]["rss_mib"]
    growth = max(r["rss_mib"] for r in rows[1:]) / warm - 1 if len(rows) > 1 else 0.0
    print(f"\nedgekeys soak: {machine()}, {time.strftime('%Y-%m-%d')}")
    print(f"calibrated {calibrated:,.0f} validations/s; offered {options.load:.0%} of it")
    header = ("min", "valid/s", "p50 ms", "p99 ms", "writes/s", "w p99 ms", "RSS MiB")
    print("{:>3} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8}".format(*header))
    for r in rows:
        print(
            f"{r['minute']:>3} {r['validations_per_s']:>9,.0f} {r['validate_p50_ms']:>7.2f} "
            f"{r['validate_p99_ms']:>7.2f} {r['writes_per_s']:>8.1f} "
            f"{r['write_p99_ms']:>8.1f} {r['rss_mib']:>8.1f}"
        )
    validations = statistics.mean(r["validations_per_s"] for r in rows)
    print(
        f"mean {validations:,.0f} validations/s; write errors {len(writes.errors)}; "
        f"RSS growth after minute 1: {growth:+.1%} (target < 10%)"
    )
    for error in writes.errors[:5]:
        print(f"  error: {error}")
    return 0 if not writes.errors and growth < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
