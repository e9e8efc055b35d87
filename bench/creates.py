"""`make bench`, the write path: CreateApiKey per second at concurrency 1, 8, 32 and 128,
each beside baselines measured in the same run on the same disk (these machines are
shared and noisy):

- raw: durable single-row commits per second of the same database, one connection
  (SQLite: WAL, synchronous=FULL; PostgreSQL: one INSERT per transaction);
- bare save: eventsourcing's own `Application.save` of a new 2-event aggregate, from 32
  threads, on the same database, with no gRPC, no projections, no data keys.

Load: h2load (up to 4 connections, the streams spread over them) against `edgekeys
serve` in its default configuration (only the address and the database moved). Also
the create latency's p50/p99 (h2load's per-request log) and the server's CPU time per
create (user + system, from /proc). `--server-source DIR` serves another checkout's code
(a before/after comparison in one run); PostgreSQL figures need `EDGEKEYS_TEST_POSTGRES`
(or a server on 127.0.0.1:5432) and are skipped without one.

Mixed (SQLite): ValidateApiKey's p99 at a steady 1,900 calls/s (h2load's log), alone and
while one client creates keys at 100/s beside it (5% of all calls writes); target: the
mixed p99 within 1.5× the read-only one.
"""

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from bench.run import VALIDATE, create_key, grpc_frame, h2load, machine, percentile
from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from service.storage.database import store_environment
from tests.e2e.conftest import ServeProcess
from tests.postgres import SERVER, fresh_database

CREATE = "/edgekeys.v1.ApiKeyService/CreateApiKey"
LLAMA = "projects/acme/deployments/llama-3"
CONCURRENCY = (1, 8, 32, 128)
TARGET_RATIO = 0.3  # of raw commits/s at 32 concurrent, SQLite
TARGET_P99_MS = 50.0
MIXED_VALIDATIONS = 1900  # per second
MIXED_WRITES = 100  # per second: 5% of all calls
TARGET_MIXED = 1.5  # mixed p99 ÷ read-only p99


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# Baselines ----------------------------------------------------------------------------


def raw_sqlite_commits(path: Path, seconds: float) -> float:
    """Durable single-row commits per second: WAL, synchronous=FULL, one connection."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, body BLOB)")

    def commit() -> None:
        db.execute("BEGIN")
        db.execute("INSERT INTO raw (body) VALUES (?)", (os.urandom(200),))
        db.execute("COMMIT")

    return _commits(commit, seconds, db.close)


def raw_postgres_commits(url: str, seconds: float) -> float:
    """Durable single-row commits per second: one INSERT per transaction."""
    db = psycopg.connect(url, autocommit=True)
    db.execute("SET synchronous_commit = on")
    db.execute("CREATE TABLE IF NOT EXISTS raw (id BIGSERIAL PRIMARY KEY, body BYTEA)")

    def commit() -> None:
        db.execute("INSERT INTO raw (body) VALUES (%s)", (os.urandom(200),))

    return _commits(commit, seconds, db.close)


def _commits(commit: Callable[[], object], seconds: float, close: Callable[[], None]) -> float:
    done = 0
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            commit()
            done += 1
    finally:
        close()
    return done / (time.perf_counter() - start)


class Bare(Aggregate):
    """The aggregate of the bare-save baseline: created, then changed once."""

    def __init__(self, name: str) -> None:
        self.name = name

    @event("Renamed")
    def rename(self, name: str) -> None:
        self.name = name


def bare_saves(environment: dict[str, str], seconds: float, threads: int = 32) -> float:
    """eventsourcing's `app.save` of a new 2-event aggregate, from `threads` threads."""
    app: Application[Any] = Application(env=environment)
    saved = [0] * threads
    start = time.perf_counter()

    def save(slot: int) -> None:
        while time.perf_counter() - start < seconds:
            aggregate = Bare(uuid.uuid4().hex)
            aggregate.rename("renamed")
            app.save(aggregate)
            saved[slot] += 1

    workers = [threading.Thread(target=save, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    app.close()
    return sum(saved) / (time.perf_counter() - start)


# CreateApiKey through the server ------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def creates(
    served: ServeProcess, payload: Path, concurrency: int, seconds: int, log_file: Path
) -> dict[str, float]:
    """h2load at `concurrency` streams in all: creates/s, latency p50/p99 (ms), and the
    server's CPU ms per create."""
    connections = min(4, concurrency)
    command = ["h2load", "-D", str(seconds), "--warm-up-time", "1"]
    command += ["-c", str(connections), "-m", str(concurrency // connections)]
    command += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    command += ["--log-file", str(log_file), "-d", str(payload), f"http://{served.address}{CREATE}"]
    assert served.process is not None
    cpu_before = cpu_seconds(served.process.pid)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(served.process.pid) - cpu_before
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", output)
    assert done and done[2] == done[3], output
    measured = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
    assert measured, output
    # h2load's log: start µs, HTTP status, duration µs. The warm-up's requests are in it too.
    durations = [int(line.split()[2]) / 1000 for line in log_file.read_text().splitlines()]
    rate = float(measured[1])
    return {
        "rate": rate,
        "p50": percentile(durations, 0.50),
        "p99": percentile(durations, 0.99),
        "cpu_ms": 1000 * cpu / max(1, len(durations)),
    }


def mixed(database: Path, workdir: Path, seconds: int) -> tuple[float, float]:
    """ValidateApiKey's p99 (ms) at MIXED_VALIDATIONS/s: alone, then with creates at
    MIXED_WRITES/s beside it."""
    with serving(database) as served:
        _, secret = create_key(served.address)
        payload = workdir / "validate.bin"
        payload.write_bytes(grpc_frame(vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)))

        def p99(log: Path) -> float:
            h2load(served.address, VALIDATE, payload, seconds, log_file=log, rate=MIXED_VALIDATIONS)
            durations = [int(line.split()[2]) / 1000 for line in log.read_text().splitlines()]
            return percentile(durations, 0.99)

        p99(workdir / "validate-warm-up.log")  # a fresh server's first seconds are slower
        alone = p99(workdir / "validate-alone.log")
        stop = threading.Event()

        def write() -> None:
            with grpc.insecure_channel(served.address) as channel:
                keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
                due = time.monotonic()
                while not stop.is_set():
                    keys.CreateApiKey(
                        pb.CreateApiKeyRequest(
                            parent="projects/acme",
                            api_key=pb.ApiKey(display_name="mixed", deployments=[LLAMA]),
                        )
                    )
                    due += 1 / MIXED_WRITES
                    time.sleep(max(0.0, due - time.monotonic()))

        writer = threading.Thread(target=write)
        writer.start()
        try:
            beside = p99(workdir / "validate-mixed.log")
        finally:
            stop.set()
            writer.join(30)
    return alone, beside


@contextmanager
def serving(database: Path | str) -> Iterator[ServeProcess]:
    served = ServeProcess(database, log_level="warning")
    served.start()
    try:
        yield served
    finally:
        served.stop()


def stored_events(database: Path | str) -> int:
    if isinstance(database, Path):
        with sqlite3.connect(database) as db:
            return int(db.execute("SELECT max(rowid) FROM stored_events").fetchone()[0] or 0)
    with psycopg.connect(database) as db:
        # The event store's table: the one with the notification ids.
        table = db.execute(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name = 'notification_id'"
        ).fetchone()
        assert table, "no event store in the database"
        found = db.execute(f"SELECT max(notification_id) FROM {table[0]}").fetchone()
        return int(found[0] or 0) if found else 0


def store_figures(
    name: str, database: Path | str, workdir: Path, seconds: int, rounds: int
) -> list[dict[str, Any]]:
    payload = workdir / "create.bin"
    payload.write_bytes(
        grpc_frame(
            pb.CreateApiKeyRequest(
                parent="projects/acme",
                api_key=pb.ApiKey(display_name="bench", description="bench", deployments=[LLAMA]),
            )
        )
    )
    rows: dict[int, list[dict[str, float]]] = {c: [] for c in CONCURRENCY}
    with serving(database) as served:
        for round_number in range(rounds):
            for concurrency in CONCURRENCY:
                before = stored_events(database)
                figures = creates(
                    served, payload, concurrency, seconds, workdir / f"h2load-{concurrency}.log"
                )
                gained = stored_events(database) - before
                # h2load counts a gRPC error (HTTP 200) as a success: check the store.
                assert gained >= 0.95 * figures["rate"] * seconds, (gained, figures)
                rows[concurrency].append(figures)
                say(
                    f"  {name} round {round_number + 1}, {concurrency} concurrent: "
                    f"{figures['rate']:,.0f}/s, p99 {figures['p99']:.1f} ms, "
                    f"{figures['cpu_ms']:.2f} ms CPU per create"
                )
    return [
        {"concurrency": c, **{k: statistics.median(r[k] for r in rows[c]) for k in rows[c][0]}}
        for c in CONCURRENCY
    ]


def postgres_reachable() -> bool:
    try:
        with psycopg.connect(f"{SERVER}/postgres", connect_timeout=2):
            return True
    except psycopg.Error as error:
        say(f"bench: no PostgreSQL server at {SERVER} ({error}); its figures are skipped")
        return False


def table(name: str, rows: list[dict[str, Any]], raw: float, bare: float) -> None:
    print(f"\n{name}: raw single-row commits {raw:,.0f}/s, bare app.save ×32 {bare:,.0f}/s")
    print("| concurrent | creates/s | ÷ raw | ÷ bare save | p50 ms | p99 ms | CPU ms/create |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        rate = row["rate"]
        print(
            f"| {row['concurrency']} | {rate:,.0f} | {rate / raw:.2f} | {rate / bare:.2f} | "
            f"{row['p50']:.1f} | {row['p99']:.1f} | {row['cpu_ms']:.2f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per figure and round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--server-source", help="serve this checkout's code instead")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    if args.server_source:  # ahead of the installed (editable) checkout
        os.environ["PYTHONPATH"] = str(Path(args.server_source).resolve())
    print(f"CreateApiKey throughput, {machine()}")
    with tempfile.TemporaryDirectory(prefix="edgekeys-bench-") as tmp:
        workdir = Path(tmp)
        say("SQLite baselines")
        raw = raw_sqlite_commits(workdir / "raw.db", args.seconds)
        sqlite = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
        bare = bare_saves({**sqlite, "SQLITE_DBNAME": str(workdir / "bare.db")}, args.seconds)
        rows = store_figures("SQLite", workdir / "edgekeys.db", workdir, args.seconds, args.rounds)
        table("SQLite", rows, raw, bare)
        at32 = next(row for row in rows if row["concurrency"] == 32)
        print(
            f"targets at 32 concurrent: ≥ {TARGET_RATIO}× raw commits "
            f"({at32['rate'] / raw:.2f}×), p99 ≤ {TARGET_P99_MS:.0f} ms ({at32['p99']:.1f} ms)"
        )
        alone, beside = mixed(workdir / "mixed.db", workdir, args.seconds)
        verdict = "ok" if beside <= TARGET_MIXED * alone else "BELOW"
        print(
            f"mixed, {MIXED_VALIDATIONS:,} validations/s + {MIXED_WRITES} creates/s: "
            f"ValidateApiKey p99 {alone:.2f} ms alone, {beside:.2f} ms mixed "
            f"({beside / alone:.2f}×; target ≤ {TARGET_MIXED}×) {verdict}"
        )
        if args.no_postgres or not postgres_reachable():
            return 0
        say("PostgreSQL baselines")
        with fresh_database() as raw_url, fresh_database() as bare_url:
            raw = raw_postgres_commits(raw_url, args.seconds)
            bare = bare_saves(postgres_environment(bare_url), args.seconds)
        with fresh_database() as url:
            rows = store_figures("PostgreSQL", url, workdir, args.seconds, args.rounds)
        table("PostgreSQL", rows, raw, bare)
    return 0


def postgres_environment(url: str) -> dict[str, str]:
    """The library's own PostgreSQL recorder, as edgekeys connects to the server."""
    environment = store_environment(url)
    environment.pop("APPLICATION_RECORDER_TOPIC")
    return environment


if __name__ == "__main__":
    sys.exit(main())
