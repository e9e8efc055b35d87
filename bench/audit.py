"""`make bench`, part two: the auditors' read paths, each figure a ratio against a
baseline measured in the same run (these machines are shared and noisy) and, in
absolute terms, against its target.

1. ListEvents, paging a project of 100,000 events 1,000 at a time over gRPC (events/s,
   target ≥ 20,000/s), against paging the same rows (that database holds only this
   project) out of the event store with Python's sqlite3.
2. GetApiKeyRevision of a key with 10,000 events, at random versions and random
   as_of_time moments (p50/p99, target p99 < 50 ms), against GetApiKey of that key.
3. VerifyAuditLog (SCOPE_FULL) over 1,000,000 events (events/s and duration, target
   ≥ 100,000/s), against SHA-256 chained over the same stored rows in a plain Python
   loop; and ValidateApiKey p99 (one call after another) while it runs against the
   same for 5 s before (target: at most 1.5×, "does not move"); then a restart, which
   checks only the events after the stored checkpoint.

The databases are seeded through the real code paths: ApiKey aggregates saved by
KeyStore (child processes, one per database), followed meanwhile by the real Projector
in this process, so events, data keys and the hash chain are all genuine. One shortcut,
on by default: the 1,000,000-event database's key catalog is marked caught up instead of
being projected (VerifyAuditLog never reads it, and projecting it costs minutes here);
`--verify-catalog` projects it for real. Servers are real `edgekeys serve` processes on
loopback; everything lives in a temporary directory removed at the end.
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import queue
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from pathlib import Path
from traceback import format_exc
from typing import Any, TypeAlias, cast
from uuid import UUID

import grpc
from sqlalchemy.exc import OperationalError

from bench.run import machine, percentile
from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, audit_pb2_grpc, validation_pb2_grpc
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import validation_pb2 as vpb
from projections.audit_log import AuditLog
from projections.catalog import PROJECTION as CATALOG
from projections.catalog import Catalog
from projections.catalog import tracking as catalog_tracking
from projections.index import ValidationIndex
from projections.projector import Projector
from service.domain import keyformat
from service.domain.api_key import ApiKey
from service.domain.names import KeyName
from service.storage.database import sql_engine
from service.write.keystore import KeyStore
from tests.e2e.conftest import BIN, ROOT, ServeProcess

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)  # event n of a database happens at EPOCH + n s
EXPIRIES = (datetime(2030, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC))
ACTOR = "bench"
LIST_PROJECT = "bench"
LIST_TARGET = 20_000  # events/s
REVISION_TARGET_MS = 50.0  # p99
VERIFY_TARGET = 100_000  # events/s over 1,000,000 events
P99_MOVE = 1.5  # ValidateApiKey p99 while a verification runs, at most this × without
LOCK_WAIT = 300  # seconds a seeding writer may wait for SQLite's write lock
# (database label, seconds spent saving or an error's text)
Results: TypeAlias = "Queue[tuple[str, float | str]]"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Seeding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPlan:
    """One key to seed: created at tick `first_tick`, then `events - 1` changes, one
    tick (second) apart: 8 in 10 attach or detach a deployment, 1 renames the key, 1
    moves its expiry."""

    project: str
    key_id: str
    events: int
    first_tick: int

    @property
    def name(self) -> str:
        return str(KeyName(self.project, self.key_id))

    def moment(self, version: int) -> datetime:
        """When version `version` (1 = KeyCreated) was recorded."""
        return EPOCH + timedelta(seconds=self.first_tick + version - 1)


def plan(projects: list[str], keys: int, events_per_key: int) -> list[KeyPlan]:
    """Keys saved one after another, so ticks (and store positions) follow key order."""
    return [
        KeyPlan(projects[k % len(projects)], f"key-{k:05d}", events_per_key, k * events_per_key)
        for k in range(keys)
    ]


def build_key(key: KeyPlan) -> ApiKey:
    """The aggregate with all its events pending, as KeyStore's commands would make it."""
    main = f"projects/{key.project}/deployments/model-main"
    extra = f"projects/{key.project}/deployments/model-extra"
    secret = keyformat.new_secret()
    aggregate = ApiKey.create(
        KeyName(key.project, key.key_id),
        f"{key.key_id} (bench)",
        "seeded by bench.audit",
        [main],
        None,
        secret_sha256=keyformat.digest(secret).hex(),
        secret_hint=keyformat.hint(secret),
        actor=ACTOR,
        request_id="",
        now=key.moment(1),
    )
    for version in range(2, key.events + 1):
        context: dict[str, Any] = {"actor": ACTOR, "request_id": "", "now": key.moment(version)}
        match version % 10:
            case 8:
                aggregate.change_details(f"{key.key_id} rev {version}", None, **context)
            case 9:
                aggregate.change_expiry(EXPIRIES[(version // 10) % 2], **context)
            case _ if extra in aggregate.deployments:
                aggregate.detach(extra, **context)
            case _:
                aggregate.attach(extra, **context)
    return aggregate


def save_keys(label: str, database_url: str, keys: list[KeyPlan], results: Results) -> None:
    """In a child process: save each key's events in one transaction; report the
    seconds taken, or what went wrong."""
    # The projector in the parent takes SQLite's write lock batch after batch; SQLite's
    # busy wait is not a queue, so allow the saver a long wait (eventsourcing reads this
    # from the environment; the default is 5 s).
    os.environ["SQLITE_LOCK_TIMEOUT"] = str(LOCK_WAIT)
    try:
        store = KeyStore(database_url, lambda: datetime.now(UTC))
        start = time.perf_counter()
        for key in keys:
            aggregate = build_key(key)
            # DataKeys.find_or_create writes in a deferred transaction, which SQLite fails
            # at once, without waiting, when another connection committed since it read
            # (and the projector commits all the time): make the data key first, retrying.
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    store.data_keys.find_or_create(aggregate.id)
                    break
                except OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            store.save(aggregate)
        results.put((label, time.perf_counter() - start))
        store.close()
    except Exception:  # what SQLAlchemy raises may not pickle: send the text
        results.put((label, format_exc()))


class UntrackedCatalog:
    """Stands in for the catalog while a database is seeded with the catalog skipped:
    it only remembers how far it was fed, to be written as the catalog's position."""

    def __init__(self) -> None:
        self.position = 0

    def process(self, events: Iterable[tuple[int, ApiKey.Event]]) -> None:
        for position, _ in events:
            self.position = position


@dataclass
class Database:
    label: str
    path: Path
    keys: list[KeyPlan]
    project_catalog: bool = True
    save_seconds: float = 0.0
    ready_seconds: float = 0.0  # from the start of seeding until fully projected
    store: KeyStore = field(init=False)
    projector: Projector = field(init=False)
    stand_in: UntrackedCatalog | None = field(init=False, default=None)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    @property
    def events(self) -> int:
        return sum(key.events for key in self.keys)

    def open(self) -> None:
        """Create every table, as `edgekeys serve` would, before any writer starts."""
        self.store = KeyStore(self.url, lambda: datetime.now(UTC))
        engine = sql_engine(self.url)
        catalog = Catalog(engine)
        audit = AuditLog(engine, self.store.events_table)
        if not self.project_catalog:
            self.stand_in = UntrackedCatalog()
        used = cast(Catalog, self.stand_in) if self.stand_in else catalog
        self.projector = self.store.projector(ValidationIndex(), used, audit)

    def close(self) -> None:
        if self.stand_in is not None:
            engine = self.projector.audit.engine
            with engine.begin() as conn:
                conn.execute(
                    catalog_tracking.update().where(catalog_tracking.c.projection == CATALOG),
                    {"position": self.stand_in.position},
                )
        self.projector.audit.engine.dispose()
        self.store.close()


def seed(databases: list[Database]) -> float:
    """Save in child processes while this one projects; seconds until all are ready."""
    for database in databases:
        database.open()
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    results: Results = context.Queue()
    savers = {
        d.label: context.Process(
            target=save_keys, args=(d.label, d.url, d.keys, results), name=f"seed-{d.label}"
        )
        for d in databases
    }
    try:
        for saver in savers.values():
            saver.start()
        saved: dict[str, float] = {}
        pending = list(databases)
        while pending:
            while True:
                try:
                    label, outcome = results.get_nowait()
                except queue.Empty:
                    break
                if isinstance(outcome, str):
                    raise RuntimeError(f"seeding {label}.db failed:\n{outcome}")
                saved[label] = outcome
            progressed = False
            for database in list(pending):
                if not database.ready_seconds:
                    before = database.projector.index.position
                    reached = database.projector.catch_up()
                    progressed = progressed or reached > before
                    if reached >= database.events:  # positions count from 1, no gaps
                        database.ready_seconds = time.perf_counter() - start
                if database.ready_seconds and database.label in saved:
                    database.save_seconds = saved[database.label]
                    pending.remove(database)
                elif savers[database.label].exitcode not in (None, 0):
                    raise RuntimeError(f"seeding {database.label}.db: the saver died")
            if not progressed:
                time.sleep(0.05)
    finally:
        for saver in savers.values():
            if saver.is_alive():
                saver.terminate()
            saver.join()
        results.close()
    for database in databases:
        assert database.projector.logged_position == database.events, database.label
        database.close()
    return time.perf_counter() - start


# Serving -----------------------------------------------------------------------------


class Server(ServeProcess):
    """`edgekeys serve` as the end-to-end tests run it, with a start deadline to suit
    a big store, and a way to wait until its start-up work (the background check of
    the audit chain) is over."""

    def start_within(self, seconds: float) -> float:
        """Start; seconds until it answered SERVING."""
        began = time.perf_counter()
        self.process = subprocess.Popen([BIN / "edgekeys", "serve"], env=self.env, cwd=ROOT)
        self.wait_serving(seconds)
        return time.perf_counter() - began

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def settle(self, limit: float) -> float:
        """Wait until the process uses under 15% of a core for a whole second (it polls
        the store every 50 ms); seconds waited."""
        began = time.perf_counter()
        while time.perf_counter() - began < limit:
            used = self.cpu_seconds()
            time.sleep(1.0)
            if self.cpu_seconds() - used < 0.15:
                return time.perf_counter() - began
        raise AssertionError(f"edgekeys serve still busy after {limit} s")

    def close(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.stop()
        except Exception:
            self.process.kill()
            self.process.wait()


# 1. ListEvents ------------------------------------------------------------------------


def list_events(address: str, project: str, page_size: int, expected: int) -> float:
    """Events per second, paging the whole project with after_position."""
    with grpc.insecure_channel(address) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        after, seen = 0, 0
        start = time.perf_counter()
        while True:
            reply = stub.ListEvents(
                apb.ListEventsRequest(
                    parent=f"projects/{project}", after_position=after, page_size=page_size
                ),
                timeout=120,
            )
            if reply.events:
                assert reply.events[0].position > after
                after = reply.events[-1].position
                seen += len(reply.events)
            if not reply.next_page_token:
                break
        seconds = time.perf_counter() - start
    assert seen == expected, f"ListEvents returned {seen} events, expected {expected}"
    return seen / seconds


def raw_rows(path: Path, table: str, page_size: int, expected: int) -> float:
    """Rows per second, paging the same rows straight out of SQLite."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        after, seen = 0, 0
        start = time.perf_counter()
        while True:
            rows = conn.execute(
                f"SELECT rowid, state FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (after, page_size),
            ).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            seen += len(rows)
        seconds = time.perf_counter() - start
    conn.close()
    assert seen == expected, f"read {seen} rows, expected {expected}"
    return seen / seconds


# 2. GetApiKeyRevision -----------------------------------------------------------------


def revision_latencies(
    address: str, key: KeyPlan, calls: int, rng: random.Random
) -> tuple[list[float], list[float], int]:
    """Seconds per GetApiKeyRevision (half by version, half by as_of_time) and per
    GetApiKey, interleaved one by one at concurrency 1; and how many revisions came
    back at the wrong version."""
    revisions: list[float] = []
    currents: list[float] = []
    wrong = 0
    with grpc.insecure_channel(address) as channel:
        audit = audit_pb2_grpc.AuditServiceStub(channel)
        keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
        current = pb.GetApiKeyRequest(name=key.name)
        for _ in range(10):  # warm up
            keys.GetApiKey(current, timeout=30)
            audit.GetApiKeyRevision(apb.GetApiKeyRevisionRequest(name=key.name, version=1))
        for call in range(calls):
            request = apb.GetApiKeyRevisionRequest(name=key.name)
            if call % 2 == 0:
                wanted = rng.randint(1, key.events)
                request.version = wanted
            else:
                offset = rng.uniform(0, key.events - 1e-3)
                wanted = int(offset) + 1
                request.as_of_time.FromDatetime(key.moment(1) + timedelta(seconds=offset))
            start = time.perf_counter()
            reply = audit.GetApiKeyRevision(request, timeout=30)
            revisions.append(time.perf_counter() - start)
            wrong += reply.api_key.etag != str(wanted)
            start = time.perf_counter()
            keys.GetApiKey(current, timeout=30)
            currents.append(time.perf_counter() - start)
    return revisions, currents, wrong


# 3. VerifyAuditLog --------------------------------------------------------------------


def verify_full(address: str) -> tuple[float, apb.VerifyAuditLogResponse]:
    """VerifyAuditLog over every event (SCOPE_FULL): seconds, reply."""
    with grpc.insecure_channel(address) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        start = time.perf_counter()
        reply = stub.VerifyAuditLog(
            apb.VerifyAuditLogRequest(scope=apb.VerifyAuditLogRequest.SCOPE_FULL), timeout=1800
        )
        return time.perf_counter() - start, reply


def gateway_key(address: str) -> tuple[str, str]:
    """A fresh key for ValidateApiKey: (secret, deployment)."""
    deployment = "projects/proj-0/deployments/model-main"
    with grpc.insecure_channel(address) as channel:
        created = api_keys_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
            pb.CreateApiKeyRequest(
                parent="projects/proj-0",
                api_key=pb.ApiKey(display_name="bench gateway", deployments=[deployment]),
            ),
            timeout=30,
        )
    return created.secret, deployment


def validate_while(
    address: str, secret: str, deployment: str, running: Callable[[], bool]
) -> list[float]:
    """ValidateApiKey latencies, one call after another (as a gateway's single
    connection), for as long as `running()` holds."""
    request = vpb.ValidateApiKeyRequest(secret=secret, deployment=deployment)
    latencies: list[float] = []
    with grpc.insecure_channel(address) as channel:
        stub = validation_pb2_grpc.ValidationServiceStub(channel)
        for _ in range(200):  # warm up the channel and the server
            stub.ValidateApiKey(request, timeout=30)
        while running() or len(latencies) < 500:
            start = time.perf_counter()
            verdict = stub.ValidateApiKey(request, timeout=30).verdict
            latencies.append(time.perf_counter() - start)
            assert verdict == vpb.VERDICT_ALLOWED, verdict
    return latencies


def validation_during_verify(
    address: str, quiet_seconds: float
) -> tuple[list[float], list[float], float, apb.VerifyAuditLogResponse]:
    """ValidateApiKey latencies for `quiet_seconds` with nothing else running, then
    while a full VerifyAuditLog runs; and that verification's seconds and reply."""
    secret, deployment = gateway_key(address)
    until = time.perf_counter() + quiet_seconds
    quiet = validate_while(address, secret, deployment, lambda: time.perf_counter() < until)
    outcome: list[tuple[float, apb.VerifyAuditLogResponse]] = []
    verifier = threading.Thread(target=lambda: outcome.append(verify_full(address)))
    verifier.start()
    busy = validate_while(address, secret, deployment, verifier.is_alive)
    verifier.join()
    [(took, reply)] = outcome
    return quiet, busy, took, reply


def hash_rows(path: Path, table: str) -> tuple[float, int, bytes]:
    """Seconds to read every stored row and chain SHA-256 over it in a plain loop, with
    the audit log's framing (so the last digest must equal the chain's head); rows."""
    previous, rows = bytes(32), 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        start = time.perf_counter()
        query = f"SELECT rowid, originator_id, originator_version, topic, state FROM {table}"
        for position, originator_id, version, topic, state in conn.execute(
            query + " ORDER BY rowid"
        ):
            topic_bytes = topic.encode()
            previous = hashlib.sha256(
                previous
                + position.to_bytes(8, "big")
                + UUID(originator_id).bytes
                + version.to_bytes(8, "big")
                + len(topic_bytes).to_bytes(4, "big")
                + topic_bytes
                + len(state).to_bytes(4, "big")
                + state
            ).digest()
            rows += 1
        seconds = time.perf_counter() - start
    conn.close()
    return seconds, rows, previous


# Report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    label: str
    ratio: float
    absolute: str
    target: str
    ok: bool | None  # None: no target


def report(figures: dict[str, Any], rows: list[Figure], notes: list[str]) -> None:
    print(f"\nedgekeys audit bench: {figures['machine']}, {figures['date'][:10]}")
    print(f"{'figure':<58} {'ratio':>9}  {'absolute':>22}  target")
    for row in rows:
        verdict = "" if row.ok is None else ("ok" if row.ok else "MISSED")
        print(f"{row.label:<58} {row.ratio:>9.3f}  {row.absolute:>22}  {row.target} {verdict}")
    for note in notes:
        print(note)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--list-events", type=int, default=100_000, help="events in the listed project"
    )
    parser.add_argument("--page-size", type=int, default=1000, help="ListEvents page size")
    parser.add_argument("--rounds", type=int, default=3, help="ListEvents rounds (median)")
    parser.add_argument(
        "--revision-events", type=int, default=10_000, help="events of the revision key"
    )
    parser.add_argument("--revision-calls", type=int, default=200)
    parser.add_argument(
        "--verify-events", type=int, default=1_000_000, help="events VerifyAuditLog checks"
    )
    parser.add_argument(
        "--verify-catalog",
        action="store_true",
        help="project the verify database's catalog for real too (slow: minutes)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (versions, moments)")
    parser.add_argument(
        "--start-timeout", type=float, default=900, help="seconds a server may take to start"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    per_key = options.revision_events
    if options.list_events < per_key or options.list_events % per_key:
        parser.error("--list-events must be a multiple of --revision-events")
    rng = random.Random(options.seed)

    workdir = Path(tempfile.mkdtemp(prefix="edgekeys-bench-audit-"))
    figures: dict[str, Any] = {"machine": machine(), "date": datetime.now(UTC).isoformat()}
    rows: list[Figure] = []
    notes: list[str] = []
    servers: list[Server] = []
    try:
        # The revision key is the listed project's first key.
        listed = Database(
            "list",
            workdir / "list.db",
            plan([LIST_PROJECT], options.list_events // per_key, per_key),
        )
        verify_keys = -(-options.verify_events // per_key)
        verified = Database(
            "verify",
            workdir / "verify.db",
            plan([f"proj-{p}" for p in range(10)], verify_keys, per_key),
            project_catalog=options.verify_catalog,
        )
        if verified.events != options.verify_events:  # the last key takes the remainder
            last = verified.keys[-1]
            rest = options.verify_events - per_key * (verify_keys - 1)
            verified.keys[-1] = KeyPlan(last.project, last.key_id, rest, last.first_tick)
        say(f"seeding {listed.events:,} + {verified.events:,} events")
        seconds = seed([listed, verified])
        figures["seed"] = {
            d.label: {
                "events": d.events,
                "save_seconds": d.save_seconds,
                "ready_seconds": d.ready_seconds,
                "catalog_projected": d.project_catalog,
            }
            for d in (listed, verified)
        }
        figures["seed"]["total_seconds"] = seconds
        for d in (listed, verified):
            notes.append(
                f"seeded {d.label}.db: {d.events:,} events saved in {d.save_seconds:.1f} s "
                f"(KeyStore, {d.events / d.save_seconds:,.0f}/s), fully projected after "
                f"{d.ready_seconds:.1f} s (catalog "
                f"{'projected' if d.project_catalog else 'marked caught up'})"
            )
        notes.append(f"seeding took {seconds:.1f} s in all (2 savers + 1 projector, pipelined)")

        # 1 and 2, on the listed project's database.
        server = Server(listed.path, log_level="warning")
        servers.append(server)
        started = server.start_within(options.start_timeout)
        settled = server.settle(options.start_timeout)
        say(f"list.db served after {started:.1f} s, settled after {settled:.1f} s more")
        table = "stored_events"
        say(f"ListEvents vs sqlite3, {options.rounds} rounds")
        grpc_rates: list[float] = []
        raw_rates: list[float] = []
        for round_number in range(options.rounds):
            raw_rates.append(raw_rows(listed.path, table, options.page_size, listed.events))
            grpc_rates.append(
                list_events(server.address, LIST_PROJECT, options.page_size, listed.events)
            )
            say(
                f"  round {round_number + 1}: ListEvents {grpc_rates[-1]:,.0f}/s, "
                f"sqlite3 {raw_rates[-1]:,.0f}/s"
            )
        listing, raw = statistics.median(grpc_rates), statistics.median(raw_rates)
        figures["list_events"] = {
            "events": listed.events,
            "page_size": options.page_size,
            "events_per_second": listing,
            "sqlite3_rows_per_second": raw,
            "rounds": {"grpc": grpc_rates, "sqlite3": raw_rates},
        }
        rows.append(
            Figure(
                "ListEvents / sqlite3 read of the same rows, events/s",
                listing / raw,
                f"{listing:,.0f} events/s",
                f"≥ {LIST_TARGET:,}/s",
                listing >= LIST_TARGET,
            )
        )

        key = listed.keys[0]
        say(f"GetApiKeyRevision vs GetApiKey, {options.revision_calls} calls each")
        revisions, currents, wrong = revision_latencies(
            server.address, key, options.revision_calls, rng
        )
        latency = {
            name: {"p50": percentile(v, 0.5) * 1e3, "p99": percentile(v, 0.99) * 1e3}
            for name, v in (("revision", revisions), ("get", currents))
        }
        figures["revision_ms"] = {**latency, "key_events": key.events, "wrong": wrong}
        p99 = latency["revision"]["p99"]
        rows.append(
            Figure(
                f"GetApiKeyRevision / GetApiKey, p99 ({key.events:,}-event key)",
                p99 / latency["get"]["p99"],
                f"p99 {p99:.1f} ms",
                f"< {REVISION_TARGET_MS:.0f} ms",
                p99 < REVISION_TARGET_MS and wrong == 0,
            )
        )
        rows.append(
            Figure(
                "GetApiKeyRevision / GetApiKey, p50",
                latency["revision"]["p50"] / latency["get"]["p50"],
                f"p50 {latency['revision']['p50']:.1f} ms",
                "-",
                None,
            )
        )
        notes.append(
            f"GetApiKey p50 {latency['get']['p50']:.1f} ms, p99 {latency['get']['p99']:.1f} ms; "
            f"revisions at the wrong version: {wrong} of {len(revisions)}"
        )
        server.close()

        # 3, on the big database.
        server = Server(verified.path, log_level="warning")
        servers.append(server)
        say(f"starting a server over {verified.events:,} events")
        started = server.start_within(options.start_timeout)
        settled = server.settle(options.start_timeout)
        figures["verify_server_start"] = {"serving_seconds": started, "idle_seconds": settled}
        notes.append(
            f"server start over {verified.events:,} events: SERVING after {started:.1f} s, "
            f"start-up chain check done {settled:.1f} s later"
        )
        say("VerifyAuditLog vs a plain SHA-256 loop")
        before, hashed, _ = hash_rows(verified.path, table)
        quiet, busy, took, reply = validation_during_verify(server.address, 5.0)
        after, hashed_after, head = hash_rows(verified.path, table)
        assert reply.ok, reply.problem
        # The gateway key made for the validation figures is one event more.
        assert reply.events_checked == verified.events + 1 == hashed + 1 == hashed_after, reply
        assert reply.checkpoint.digest == head.hex(), "the chain's head is not the rows' hash"
        baseline = (before + after) / 2
        rate = reply.events_checked / took
        validate_p99 = {
            "quiet": percentile(quiet, 0.99) * 1e3,
            "verifying": percentile(busy, 0.99) * 1e3,
        }
        figures["verify"] = {
            "events": reply.events_checked,
            "seconds": took,
            "events_per_second": rate,
            "sha256_loop_seconds": [before, after],
            "validate_p99_ms": validate_p99,
            "validate_calls": {"quiet": len(quiet), "verifying": len(busy)},
        }
        rows.append(
            Figure(
                "VerifyAuditLog (full) / SHA-256 loop over the rows, events/s",
                baseline / took,
                f"{rate:,.0f}/s in {took:.1f} s",
                f"≥ {VERIFY_TARGET:,}/s",
                rate >= VERIFY_TARGET,
            )
        )
        rows.append(
            Figure(
                "ValidateApiKey p99 while verifying / without",
                validate_p99["verifying"] / validate_p99["quiet"],
                f"p99 {validate_p99['verifying']:.2f} vs {validate_p99['quiet']:.2f} ms",
                f"≤ {P99_MOVE}×",
                validate_p99["verifying"] <= P99_MOVE * validate_p99["quiet"],
            )
        )
        server.close()
        # A restart over the verified store checks only the tail after its checkpoint.
        server = Server(verified.path, log_level="warning")
        servers.append(server)
        restarted = server.start_within(options.start_timeout)
        resettled = server.settle(options.start_timeout)
        figures["verify_server_restart"] = {
            "serving_seconds": restarted,
            "idle_seconds": resettled,
        }
        notes.append(
            f"restart over the verified store: SERVING after {restarted:.1f} s, idle "
            f"{resettled:.1f} s later (the start checks only the events after its checkpoint)"
        )
        notes.append(
            f"plain SHA-256 loop over the same rows: {hashed / baseline:,.0f}/s "
            f"({before:.1f} s before, {after:.1f} s after)"
        )
        server.close()
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    report(figures, rows, notes)
    figures["ratios"] = {row.label: row.ratio for row in rows}
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
