"""`make bench-scale` (not part of `make test` or `make bench`: it takes the better part
of an hour): edgekeys over a PostgreSQL store of 1,000,000 keys, 3,000,000 events, in a
fresh database on the server the tests use (`EDGEKEYS_TEST_POSTGRES`), dropped at the end.

1. Seed in bulk. Each key's events come from the ApiKey aggregate itself: KeyCreated
   with one deployment, DeploymentAttached, then DetailsChanged or ExpiryChanged in
   turn. The application's mapper turns them into stored events (names encrypted) and
   its recorder inserts them, `--batch` keys per transaction. Data keys: the mapper's
   DataKeys.find_or_create would commit one transaction per key; here each batch's
   data keys are inserted in one statement before its events, and handed to that
   DataKeys's cache, as find_or_create leaves them, so encoding finds them in memory.
2. A first replica folds all of it into the shared catalog and audit log (the longest
   part; progress from their tracking positions).
3. A new replica on the same store: seconds from spawn to SERVING (target < 15 s), and
   its RSS less that of an idle replica on an empty database (target < 500 MiB), at
   SERVING and once its start-up work (the audit chain check) is over. A sample of
   the seeded keys must then be ALLOWED by it.
4. Write throughput on this database, as bench.replicas measures it: CreateApiKey
   with 1 and 2 replicas against bare `KeyStore.save()`.
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.audit import Server, say
from bench.replicas import Row, postgres_reachable, report, write_rates, write_rows
from bench.run import VALIDATE, latencies, machine, percentile
from edgekeys.v1 import validation_pb2 as vpb
from edgekeys.v1 import validation_pb2_grpc
from projections.audit_log import AuditLog
from projections.catalog import Catalog
from service.domain import keyformat
from service.domain.api_key import ApiKey
from service.domain.clock import utc_now
from service.domain.names import KeyName
from service.write.keystore import KeyStore
from tests.postgres import fresh_database

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)  # key n is created at EPOCH + n seconds
EXPIRY = datetime(2030, 1, 1, tzinfo=UTC)
PROJECTS = 100
EVENTS_PER_KEY = 3
SAMPLES = 10  # seeded keys the new replica is asked about
READY_TARGET = 15.0  # seconds
RSS_TARGET = 500.0  # MiB
PERSONAL_DATA_KEYS = sa.table("personal_data_keys", sa.column("owner"), sa.column("data_key"))


def deployment(project: str, model: str) -> str:
    return f"projects/{project}/deployments/{model}"


def build_key(n: int) -> tuple[ApiKey, str]:
    """Key number `n` with its events pending, and its secret."""
    project = f"proj-{n % PROJECTS:03d}"
    secret = keyformat.new_secret()
    context: dict[str, Any] = {
        "actor": "bench",
        "request_id": "",
        "now": EPOCH + timedelta(seconds=n),
    }
    key = ApiKey.create(
        KeyName(project, f"key-{n:07d}"),
        f"key {n}",
        "seeded by bench.scale",
        [deployment(project, "model-a")],
        None,
        secret_sha256=keyformat.digest(secret).hex(),
        secret_hint=keyformat.hint(secret),
        **context,
    )
    key.attach(deployment(project, "model-b"), **context)
    if n % 2:
        key.change_expiry(EXPIRY, **context)
    else:
        key.change_details(f"key {n}, renamed", None, **context)
    return key, secret


def seed(store: KeyStore, keys: int, batch: int) -> tuple[float, dict[str, str]]:
    """Seconds taken, and a sample of the keys' secrets by deployment they may reach."""
    samples: dict[str, str] = {}
    every = max(1, keys // SAMPLES)
    start = last_said = time.perf_counter()
    for first in range(0, keys, batch):
        built = [build_key(n) for n in range(first, min(keys, first + batch))]
        data_keys = {key.id: AESGCM.generate_key(bit_length=256) for key, _ in built}
        with store.engine.begin() as conn:  # committed before the events that use them
            conn.execute(
                PERSONAL_DATA_KEYS.insert(),
                [{"owner": owner.hex, "data_key": key} for owner, key in data_keys.items()],
            )
        cache = store.data_keys._cache  # as find_or_create leaves it, for this batch only
        cache.clear()
        cache.update(data_keys)
        store.recorder.insert_events(
            [store.mapper.to_stored_event(e) for key, _ in built for e in key.collect_events()]
        )
        samples.update(
            (secret, key.deployments[0])
            for n, (key, secret) in enumerate(built, first)
            if n % every == 0
        )
        done = first + len(built)
        now = time.perf_counter()
        if now - last_said > 15 or done == keys:
            last_said = now
            say(
                f"  {done:,} keys, {done * EVENTS_PER_KEY:,} events in {now - start:.0f} s "
                f"({done * EVENTS_PER_KEY / (now - start):,.0f} events/s)"
            )
    return time.perf_counter() - start, samples


def status_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def pid(server: Server) -> int:
    assert server.process is not None
    return server.process.pid


def start_watching(server: Server, timeout: float, progress: Callable[[], str]) -> float:
    """Start `server`; say how it progresses every minute; seconds until SERVING."""
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(server.start_within, timeout)
        while not wait([started], timeout=60).done:
            say(f"  {progress()}")
        return started.result()


def allowed(address: str, samples: dict[str, str]) -> int:
    """How many of the sample keys the server at `address` allows."""
    with grpc.insecure_channel(address) as channel:
        validate = validation_pb2_grpc.ValidationServiceStub(channel).ValidateApiKey
        return sum(
            validate(vpb.ValidateApiKeyRequest(secret=s, deployment=d), timeout=5).verdict
            == vpb.VERDICT_ALLOWED
            for s, d in samples.items()
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys to seed (3 events each)")
    # Larger batches (above about 4,000 keys, 5 MB) can stall for good in psycopg's pipeline
    # mode, which the recorder's insert uses: the statement is not all sent when its last
    # part does not fit in the socket's buffer at once.
    parser.add_argument("--batch", type=int, default=1000, help="keys per seeding transaction")
    parser.add_argument("--rounds", type=int, default=3, help="write throughput rounds")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per throughput run")
    parser.add_argument(
        "--project-timeout", type=float, default=4 * 3600, help="seconds the first replica may take"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    if not shutil.which("h2load"):
        print("bench: h2load not found (Debian package nghttp2-client; `make bench` installs it)")
        return 2
    if not postgres_reachable():
        return 2

    figures: dict[str, Any] = {"machine": machine(), "date": utc_now().isoformat()}
    events = options.keys * EVENTS_PER_KEY
    workdir = Path(tempfile.mkdtemp(prefix="edgekeys-bench-scale-"))
    servers: list[Server] = []
    try:
        say("an idle replica on an empty database")
        with fresh_database() as empty_url:
            idle = Server(empty_url, log_level="warning")
            servers.append(idle)
            idle.start_within(60)
            idle.settle(60)
            idle_rss = status_kib(pid(idle), "VmRSS") / 1024
            idle.close()
        figures["idle_rss_mib"] = idle_rss

        with fresh_database() as url:
            store = KeyStore(url, utc_now)
            catalog = Catalog(store.engine)  # every table, as `edgekeys serve` makes them
            audit = AuditLog(store.engine, store.events_table)
            say(f"seeding {options.keys:,} keys, {events:,} events")
            seeded, samples = seed(store, options.keys, options.batch)
            store.close()
            figures["seed"] = {"events": events, "seconds": seeded}

            say("a first replica projects the catalog and the audit log")
            first = Server(url, log_level="warning")
            servers.append(first)
            began = time.perf_counter()
            projected = start_watching(
                first,
                options.project_timeout,
                lambda: (
                    f"{time.perf_counter() - began:,.0f} s: catalog at {catalog.position:,}, "
                    f"audit log at {audit.position:,} of {events:,} events"
                ),
            )
            first.settle(600)
            figures["first_replica_seconds"] = projected

            say("a new replica")
            new = Server(url, log_level="warning")
            servers.append(new)
            ready = new.start_within(600)
            rss = status_kib(pid(new), "VmRSS") / 1024
            found = allowed(new.address, samples)
            secret, model = next(iter(samples.items()))
            asked = vpb.ValidateApiKeyRequest(secret=secret, deployment=model).SerializeToString()
            checking = latencies(new.address, VALIDATE, asked, 1000)
            settled = new.settle(600)
            rss_settled = status_kib(pid(new), "VmRSS") / 1024
            peak = status_kib(pid(new), "VmHWM") / 1024
            idling = latencies(new.address, VALIDATE, asked, 1000)
            assert found == len(samples), f"the new replica allows {found} of {len(samples)}"
            figures["new_replica"] = {
                "serving_seconds": ready,
                "rss_mib": rss,
                "rss_settled_mib": rss_settled,
                "peak_rss_mib": peak,
                "settled_after_seconds": settled,
                "validate_ms": {
                    name: {"p50": percentile(v, 0.5) * 1e3, "p99": percentile(v, 0.99) * 1e3}
                    for name, v in (("during_chain_check", checking), ("after", idling))
                },
            }
            new.close()
            first.close()

            say(f"write throughput, {options.rounds} rounds of {options.seconds} s")
            rates = write_rates(url, workdir, options.rounds, options.seconds, 600)
            figures["creates_per_second"] = rates
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    added = max(rss, rss_settled) - idle_rss
    rows = [
        Row(
            f"new replica over {options.keys:,} keys: spawn to SERVING",
            f"{ready:.1f} s",
            f"< {READY_TARGET:.0f} s",
            ready < READY_TARGET,
        ),
        Row(
            "new replica: RSS above an idle replica's",
            f"{added:,.0f} MiB ({max(rss, rss_settled):,.0f} - {idle_rss:,.0f})",
            f"< {RSS_TARGET:.0f} MiB",
            added < RSS_TARGET,
        ),
        *write_rows(rates),
    ]
    notes = [
        f"seeded {events:,} events in {seeded:,.0f} s ({events / seeded:,.0f} events/s, "
        f"{options.batch * EVENTS_PER_KEY:,} per transaction)",
        f"first replica: projected catalog and audit log, SERVING after {projected:,.0f} s",
        f"new replica: RSS {rss:,.0f} MiB at SERVING, {rss_settled:,.0f} MiB after its "
        f"start-up chain check ({settled:.0f} s later), peak {peak:,.0f} MiB; "
        f"idle replica {idle_rss:.0f} MiB",
        "new replica: ValidateApiKey at concurrency 1 "
        + "; ".join(
            f"{name.replace('_', ' ')} p50 {v['p50']:.2f} ms, p99 {v['p99']:.2f} ms"
            for name, v in figures["new_replica"]["validate_ms"].items()
        ),
        "CreateApiKey/s by round: "
        + "; ".join(
            f"{name} " + ", ".join(f"{r:,.0f}" for r in values) for name, values in rates.items()
        ),
    ]
    report("edgekeys scale bench (PostgreSQL)", figures, rows, notes)
    figures["medians"] = {name: statistics.median(values) for name, values in rates.items()}
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
