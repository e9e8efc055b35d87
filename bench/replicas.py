"""`make bench`, part three: replicas sharing one PostgreSQL store (a fresh database on
the server the tests use, `EDGEKEYS_TEST_POSTGRES`, dropped at the end).

1. Propagation: changes made through replica A — create a key, detach one of its two
   deployments, shorten its expiry, delete it, in turn — each timed from A's reply
   until replica B, asked in a tight loop, answers accordingly: ALLOWED for the new key,
   DEPLOYMENT_NOT_ALLOWED at the detached deployment, the new expire_time in its
   ValidateApiKey answer (from then on B turns the key EXPIRED by its own clock, with no
   further word from anyone; waiting for EXPIRED would time the expiry we picked, not
   the propagation), NOT_FOUND once deleted. Writes land at random moments, 0–60 ms
   apart. Target p99 ≤ 100 ms.
2. Write throughput: CreateApiKey driven by h2load (4 connections x 32 streams per
   replica) against 1 replica, and against 2 at once (one h2load each, rates summed),
   beside the bare rate of the same database: `KeyStore.save()` of the same new ApiKey
   in a loop, one at a time as a replica's single writer saves, with no gRPC and no
   projections. Only the replicas a figure names are running while it is measured.
   Rounds interleave the three; each figure is the median of its rounds.
"""

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from bench.audit import Server, say
from bench.run import grpc_frame, h2load, machine, percentile
from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, validation_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from service.domain import keyformat
from service.domain.api_key import ApiKey
from service.domain.clock import utc_now
from service.domain.names import KeyName
from service.write.keystore import KeyStore
from tests.postgres import SERVER, fresh_database

PROJECT = "acme"
LLAMA = f"projects/{PROJECT}/deployments/llama"
MISTRAL = f"projects/{PROJECT}/deployments/mistral"
CREATE = "/edgekeys.v1.ApiKeyService/CreateApiKey"
KINDS = ("create", "detach", "shorten", "delete")
PROPAGATION_TARGET_MS = 100.0  # p99
GIVE_UP = 10.0  # seconds a change may take to reach B before the bench fails


def in_seconds(seconds: int) -> Timestamp:
    """A whole-second moment from now, so B's answer can be compared field by field."""
    return Timestamp(seconds=int(time.time()) + seconds)


# Reporting, shared with bench.scale ---------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    measured: str
    target: str = "-"
    ok: bool | None = None  # None: no target


def report(title: str, figures: dict[str, Any], rows: list[Row], notes: list[str]) -> None:
    print(f"\n{title}: {figures['machine']}, {figures['date'][:10]}")
    print(f"{'figure':<60} {'measured':>34}  target")
    for row in rows:
        verdict = "" if row.ok is None else ("ok" if row.ok else "MISSED")
        print(f"{row.label:<60} {row.measured:>34}  {row.target} {verdict}")
    for note in notes:
        print(note)


def postgres_reachable() -> bool:
    try:
        psycopg.connect(f"{SERVER}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as error:
        print(f"bench: no PostgreSQL server at {SERVER} ({error}); set EDGEKEYS_TEST_POSTGRES")
        return False
    return True


@contextmanager
def replicas(database_url: str, count: int, start_timeout: float) -> Iterator[list[Server]]:
    """`count` real `edgekeys serve` processes on one store, each SERVING and done with
    its start-up work; stopped after. (Until its check of the audit chain is over, a
    replica over millions of events writes several times slower: see bench.scale.)"""
    with ExitStack() as stack:
        started = []
        for _ in range(count):
            server = Server(database_url, log_level="warning")
            stack.callback(server.close)
            server.start_within(start_timeout)
            started.append(server)
        for server in started:
            server.settle(start_timeout)
        yield started


# 1. Propagation ----------------------------------------------------------------------


@dataclass
class Propagation:
    after_reply: dict[str, list[float]]  # seconds until B reflects a change, by kind
    after_request: list[float]  # the same, counted from the request to A
    at_first_ask: int = 0  # changes B reflected already when first asked after A's reply


def propagation_delays(a: str, b: str, changes: int) -> Propagation:
    """Seconds from A's reply (and from the request to A) to B's first answer that
    reflects the change."""
    found = Propagation({kind: [] for kind in KINDS}, [])
    with grpc.insecure_channel(a) as to_a, grpc.insecure_channel(b) as to_b:
        keys = api_keys_pb2_grpc.ApiKeyServiceStub(to_a)
        validate = validation_pb2_grpc.ValidationServiceStub(to_b).ValidateApiKey
        name = secret = ""
        for i in range(changes):
            time.sleep(random.uniform(0, 0.06))
            kind = KINDS[i % len(KINDS)]
            # What B must answer, asked at which deployment; and with which expiry.
            deployment, wanted, expiry = LLAMA, vpb.VERDICT_ALLOWED, None
            sent = time.perf_counter()
            match kind:
                case "create":
                    created = keys.CreateApiKey(
                        pb.CreateApiKeyRequest(
                            parent=f"projects/{PROJECT}",
                            api_key=pb.ApiKey(
                                display_name="propagation",
                                deployments=[LLAMA, MISTRAL],
                                expire_time=in_seconds(30 * 86400),
                            ),
                        ),
                        timeout=10,
                    )
                    acknowledged = time.perf_counter()
                    name, secret = created.api_key.name, created.secret
                case "detach":
                    keys.DetachDeployment(
                        pb.DetachDeploymentRequest(name=name, deployment=MISTRAL), timeout=10
                    )
                    acknowledged = time.perf_counter()
                    deployment, wanted = MISTRAL, vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED
                case "shorten":
                    expiry = in_seconds(3600)
                    keys.UpdateApiKey(
                        pb.UpdateApiKeyRequest(
                            api_key=pb.ApiKey(name=name, expire_time=expiry),
                            update_mask=FieldMask(paths=["expire_time"]),
                        ),
                        timeout=10,
                    )
                    acknowledged = time.perf_counter()
                case "delete":
                    keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=name), timeout=10)
                    acknowledged = time.perf_counter()
                    wanted = vpb.VERDICT_NOT_FOUND
            asked = vpb.ValidateApiKeyRequest(secret=secret, deployment=deployment)
            asks = 0
            while True:
                reply = validate(asked, timeout=5)
                asks += 1
                if reply.verdict == wanted and (expiry is None or reply.expire_time == expiry):
                    break
                if time.perf_counter() - acknowledged > GIVE_UP:
                    raise AssertionError(f"a {kind} did not reach replica B within {GIVE_UP} s")
            reflected = time.perf_counter()
            found.after_reply[kind].append(reflected - acknowledged)
            found.after_request.append(reflected - sent)
            found.at_first_ask += asks == 1
    return found


# 2. Write throughput -----------------------------------------------------------------


def bare_saves(store: KeyStore, seconds: float) -> float:
    """Keys per second saved by `KeyStore.save()`, one at a time: a new ApiKey as
    CreateApiKey makes it (its data key is created in a transaction of its own, as there)."""
    saved = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        secret = keyformat.new_secret()
        key = ApiKey.create(
            KeyName(PROJECT, f"bare-{uuid.uuid4().hex[:16]}"),
            "bench",
            "",
            [LLAMA],
            None,
            secret_sha256=keyformat.digest(secret).hex(),
            secret_hint=keyformat.hint(secret),
            actor="anonymous",
            request_id="",
            now=utc_now(),
        )
        store.save(key)
        saved += 1
    return saved / (time.perf_counter() - start)


def write_rates(
    database_url: str, workdir: Path, rounds: int, seconds: int, start_timeout: float
) -> dict[str, list[float]]:
    """Keys created per second, by round: bare saves, then 1 replica, then 2."""
    payload = workdir / "create.bin"
    payload.write_bytes(
        grpc_frame(
            pb.CreateApiKeyRequest(
                parent=f"projects/{PROJECT}",
                api_key=pb.ApiKey(display_name="bench", deployments=[LLAMA]),
            )
        )
    )
    rates: dict[str, list[float]] = {"bare": [], "1 replica": [], "2 replicas": []}
    store = KeyStore(database_url, utc_now)

    def created_by(drive: Callable[[], float]) -> float:
        """The rate h2load reports, checked against the keys the store gained: h2load
        counts a gRPC error as a success (HTTP 200)."""
        before = store.recorder.max_notification_id() or 0
        rate = drive()
        gained = (store.recorder.max_notification_id() or 0) - before
        assert gained >= 0.95 * rate * seconds, f"{gained} keys stored at {rate:.0f}/s"
        return rate

    try:
        for round_number in range(rounds):
            rates["bare"].append(bare_saves(store, seconds))
            with replicas(database_url, 1, start_timeout) as [a]:
                rates["1 replica"].append(
                    created_by(lambda: h2load(a.address, CREATE, payload, seconds))
                )
            with replicas(database_url, 2, start_timeout) as both, ThreadPoolExecutor(2) as pool:
                rates["2 replicas"].append(
                    created_by(
                        lambda: sum(
                            pool.map(lambda s: h2load(s.address, CREATE, payload, seconds), both)
                        )
                    )
                )
            say(
                f"  round {round_number + 1}: "
                + ", ".join(f"{n} {r[-1]:,.0f}/s" for n, r in rates.items())
            )
    finally:
        store.close()
    return rates


def write_rows(rates: dict[str, list[float]]) -> list[Row]:
    bare = statistics.median(rates["bare"])
    rows = []
    for name in ("1 replica", "2 replicas"):
        rate = statistics.median(rates[name])
        rows.append(
            Row(
                f"CreateApiKey, {name} ÷ bare KeyStore.save, keys/s",
                f"{rate / bare:.2f} ({rate:,.0f} vs {bare:,.0f}/s)",
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=1000, help="propagated changes")
    parser.add_argument("--rounds", type=int, default=3, help="write throughput rounds")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per throughput run")
    parser.add_argument("--start-timeout", type=float, default=60)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    if shutil.which("h2load") is None:
        print("bench: h2load not found (Debian package nghttp2-client; `make bench` installs it)")
        return 2
    if not postgres_reachable():
        return 2

    figures: dict[str, Any] = {"machine": machine(), "date": utc_now().isoformat()}
    workdir = Path(tempfile.mkdtemp(prefix="edgekeys-bench-replicas-"))
    try:
        with fresh_database() as database_url:
            say(f"propagation A → B over {options.changes:,} changes")
            with replicas(database_url, 2, options.start_timeout) as [a, b]:
                propagation = propagation_delays(a.address, b.address, options.changes)
            say(f"write throughput, {options.rounds} rounds of {options.seconds} s")
            rates = write_rates(
                database_url, workdir, options.rounds, options.seconds, options.start_timeout
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def ms(seconds: list[float]) -> dict[str, float]:
        return {"p50": percentile(seconds, 0.5) * 1e3, "p99": percentile(seconds, 0.99) * 1e3}

    every = [d for kind in KINDS for d in propagation.after_reply[kind]]
    figures["propagation_ms"] = {
        "after_reply": {
            kind: ms(v) for kind, v in [("all", every), *propagation.after_reply.items()]
        },
        "after_request": ms(propagation.after_request),
        "reflected_at_first_ask": propagation.at_first_ask,
    }
    figures["creates_per_second"] = rates
    shown = figures["propagation_ms"]["after_reply"]
    rows = [
        Row(
            f"propagation A → B, {len(every):,} changes, from A's reply",
            f"p50 {shown['all']['p50']:.1f} ms, p99 {shown['all']['p99']:.1f} ms",
            f"p99 ≤ {PROPAGATION_TARGET_MS:.0f} ms",
            shown["all"]["p99"] <= PROPAGATION_TARGET_MS,
        ),
        Row(
            "propagation A → B, from the request to A",
            "p50 {p50:.1f} ms, p99 {p99:.1f} ms".format(
                **figures["propagation_ms"]["after_request"]
            ),
        ),
        *write_rows(rates),
    ]
    notes = [
        "propagation by kind, from A's reply: "
        + "; ".join(
            f"{kind} p50 {v['p50']:.1f} / p99 {v['p99']:.1f} ms"
            for kind, v in shown.items()
            if kind != "all"
        ),
        f"B answered accordingly at the first ask after A's reply for "
        f"{propagation.at_first_ask:,} of {len(every):,} changes (it is told at A's commit, "
        "before A has updated its own projections and replied)",
    ]
    report("edgekeys replicas bench (PostgreSQL)", figures, rows, notes)
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
