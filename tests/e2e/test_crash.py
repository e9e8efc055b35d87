"""Crashes: `edgekeys serve` SIGKILLed at random moments, with requests in flight from
several client threads, and restarted. After every restart each acknowledged change is
there, no change is half there, and the catalog, the audit log and the validation index
are what a replay of the store from scratch gives.

EDGEKEYS_CRASH_ITERATIONS sets the number of kills per store (default 10; `make
crash-test` runs 500 and prints a summary)."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import replication_pb2 as rpb
from projections import audit_log as audit
from projections import catalog
from projections.audit_log import AuditLog
from projections.catalog import Catalog
from projections.index import ValidationIndex
from service.domain.clock import utc_now
from service.storage.database import sql_engine
from service.write.keystore import KeyStore
from tests.e2e.conftest import PROJECT, ROOT, Node, ServeProcess
from tests.e2e.kill_after_commit import POINTS
from tests.postgres import fresh_database

pytestmark = pytest.mark.both_stores

ITERATIONS = int(os.environ.get("EDGEKEYS_CRASH_ITERATIONS", "10"))
THREADS = 3
DEPLOYMENTS = [f"{PROJECT}/deployments/model-{i}" for i in range(5)]
LOST = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# Where each kill point of kill_after_commit leaves the catalog and the audit log.
POINTS_LEFT_AT = {
    "before the projections": (1, 1),
    "inside the catalog's transaction": (1, 1),
    "between the catalog and the audit log": (2, 1),
}
# Everything derived from events, compared row by row with a replay's.
TABLES = [catalog.keys, catalog.key_deployments, catalog.tracking, audit.audit_log]

View = tuple[str, tuple[str, ...], int, str, int | None]  # name, deployments, state, etag, expiry
Call = Callable[[], Any]  # an RPC whose reply has an `api_key`


def view(key: pb.ApiKey) -> View:
    """What a client sees of a key that a change may alter."""
    expiry = key.expire_time.seconds if key.HasField("expire_time") else None
    return key.display_name, tuple(sorted(key.deployments)), key.state, key.etag, expiry


@dataclass
class Known:
    """A key as last acknowledged (None: its creation was not), and the change in flight
    when the server died, if any, as the view it would leave."""

    acked: View | None
    pending: View | None = None


@dataclass
class Tally:
    iterations: int = 0
    acknowledged: int = 0
    kills_in_flight: int = 0
    in_flight: int = 0
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def flying(self, delta: int) -> None:
        with self.lock:
            self.in_flight += delta


class Client(threading.Thread):
    """Changes its own keys (so no two threads race on one key) until the server dies."""

    def __init__(self, node: Node, keys: dict[str, Known], tally: Tally, prefix: str) -> None:
        super().__init__(daemon=True)
        self.node, self.keys, self.tally, self.prefix = node, keys, tally, prefix
        self.random = random.Random()

    def run(self) -> None:
        try:
            while self.step():
                pass
        except BaseException as error:
            self.tally.errors.append(error)

    def step(self) -> bool:
        """One change; False once the server is gone (the change is then pending)."""
        live = [n for n, k in self.keys.items() if k.acked and k.acked[2] == pb.ApiKey.STATE_ACTIVE]
        if not live or self.random.random() < 0.25:
            name = f"{PROJECT}/apiKeys/{self.prefix}-{len(self.keys)}"
            expected: View = ("new", (DEPLOYMENTS[0],), pb.ApiKey.STATE_ACTIVE, "1", None)
            self.keys[name] = Known(None)
            call = self.create(name)
        else:
            name = self.random.choice(live)
            old = self.keys[name].acked
            assert old is not None
            expected, call = self.change(name, old)
        self.tally.flying(1)
        try:
            reply = call()
        except grpc.RpcError as error:
            if error.code() not in LOST:
                raise
            self.keys[name].pending = expected
            return False
        finally:
            self.tally.flying(-1)
        assert view(reply.api_key) == expected, name
        self.keys[name].acked = expected
        with self.tally.lock:
            self.tally.acknowledged += 1
        return True

    def create(self, name: str) -> Call:
        request = pb.CreateApiKeyRequest(
            parent=PROJECT,
            api_key_id=name.rsplit("/", 1)[1],
            api_key=pb.ApiKey(display_name="new", deployments=DEPLOYMENTS[:1]),
        )
        return lambda: self.node.keys.CreateApiKey(request, timeout=10)

    def change(self, name: str, old: View) -> tuple[View, Call]:
        """A random change to the key, and the view it leaves."""
        display_name, deployments, _, etag, expiry = old
        version = str(int(etag) + 1)
        keys = self.node.keys
        free = [d for d in DEPLOYMENTS if d not in deployments]
        choice = self.random.choice(["attach", "detach", "update", "update", "delete"])
        if choice == "attach" and free:
            added = self.random.choice(free)
            request = pb.AttachDeploymentRequest(name=name, deployment=added, etag=etag)
            after = (display_name, tuple(sorted((*deployments, added))), 1, version, expiry)
            return after, lambda: keys.AttachDeployment(request, timeout=10)
        if choice == "detach" and deployments:
            gone = self.random.choice(deployments)
            request_ = pb.DetachDeploymentRequest(name=name, deployment=gone, etag=etag)
            left = tuple(d for d in deployments if d != gone)
            after = (display_name, left, 1, version, expiry)
            return after, lambda: keys.DetachDeployment(request_, timeout=10)
        if choice == "delete":
            deleted = pb.DeleteApiKeyRequest(name=name, etag=etag)
            after = (display_name, deployments, pb.ApiKey.STATE_DELETED, version, expiry)
            return after, lambda: keys.DeleteApiKey(deleted, timeout=10)
        renamed = f"name {self.random.randrange(10**6)}"
        until = Timestamp(seconds=4_102_444_800 + self.random.randrange(10**6))
        update = pb.UpdateApiKeyRequest(
            api_key=pb.ApiKey(name=name, display_name=renamed, expire_time=until, etag=etag)
        )
        # One request, two events (details, expiry): the version moves by two.
        after = (renamed, deployments, 1, str(int(etag) + 2), until.seconds)
        return after, lambda: keys.UpdateApiKey(update, timeout=10)


class Replay:
    """A fresh KeyStore reading the store, projecting into a fresh index and a fresh
    catalog and audit log of its own (`scratch`), never touched by the server."""

    def __init__(self, store: str, scratch: str) -> None:
        self.keys = KeyStore(store, utc_now)
        engine = sql_engine(scratch)
        self.index = ValidationIndex()
        self.projector = self.keys.projector(
            self.index, Catalog(engine), AuditLog(engine, self.keys.events_table)
        )
        self.engine = engine

    def close(self) -> None:
        self.keys.close()
        self.engine.dispose()


@contextmanager
def replaying(store: str, tmp_path: Path) -> Iterator[Replay]:
    if store.startswith("sqlite"):
        replay = Replay(store, f"sqlite:///{tmp_path / 'replay.db'}")
        yield replay
        replay.close()
        return
    with fresh_database() as scratch:
        replay = Replay(store, scratch)
        yield replay
        replay.close()


def rows(engine: sa.Engine) -> list[list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return [
            [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
            for t in TABLES
        ]


def served_index(node: Node) -> dict[str, tuple[bytes, frozenset[str], datetime | None]]:
    """The server's whole validation index, as an edge follower receives it."""
    entries = {}
    stream = node.replication.StreamIndex(rpb.StreamIndexRequest(after_position=0), timeout=30)
    for reply in stream:
        for change in reply.changes:
            expiry = change.expire_time.ToDatetime(UTC) if change.HasField("expire_time") else None
            entries[change.api_key] = (change.secret_sha256, frozenset(change.deployments), expiry)
        if reply.snapshot_complete:
            stream.cancel()
            return entries
    raise AssertionError("the index stream ended before its snapshot did")


def check_derived_state(node: Node, replay: Replay, store_engine: sa.Engine) -> None:
    """The server's catalog, audit log and index equal the replay's."""
    head = replay.projector.catch_up()
    assert node.status().position == head
    assert rows(store_engine) == rows(replay.engine)
    _, entries = replay.index.snapshot()
    assert served_index(node) == {e.name: (e.digest, e.deployments, e.expire_time) for e in entries}


def check_model(node: Node, keys: dict[str, Known]) -> int:
    """Every acknowledged change is there; a change in flight is wholly there or wholly
    absent; the catalog (ListApiKeys) agrees with the aggregates (GetApiKey). Resolves
    the pending changes into the model; returns how many acknowledged keys were checked."""
    listed: dict[str, View | None] = {}
    token = ""
    while True:
        request = pb.ListApiKeysRequest(
            parent=PROJECT, page_size=1000, page_token=token, show_deleted=True
        )
        page = node.keys.ListApiKeys(request, timeout=30)
        listed.update((key.name, view(key)) for key in page.api_keys)
        if not (token := page.next_page_token):
            break
    for name, known in keys.items():
        if known.pending is not None:
            try:
                found: View | None = view(
                    node.keys.GetApiKey(pb.GetApiKeyRequest(name=name)).api_key
                )
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error
                found = None
            assert found in (known.acked, known.pending), (name, found, known)
            assert listed.get(name) == found, name
            known.acked, known.pending = found, None
    assert listed == {n: k.acked for n, k in keys.items() if k.acked is not None}
    return len(listed)


def integrity_check(store: str) -> None:
    if not store.startswith("sqlite"):
        return
    path = store.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_acknowledged_changes_survive_kills_and_nothing_is_half_applied(
    store: str, tmp_path: Path
) -> None:
    process = ServeProcess(store)
    log = tmp_path / "serve.log"
    store_engine = sql_engine(store)
    keys: list[dict[str, Known]] = [{} for _ in range(THREADS)]
    tally = Tally()
    started = time.monotonic()
    checked = 0
    node = Node(process, log)
    with replaying(store, tmp_path) as replay:
        try:
            node.start()
            for iteration in range(ITERATIONS):
                clients = [
                    Client(node, keys[t], tally, f"crash-{iteration}-{t}") for t in range(THREADS)
                ]
                for client in clients:
                    client.start()
                time.sleep(random.uniform(0.01, 0.4))
                if tally.in_flight:
                    tally.kills_in_flight += 1
                node.kill()
                for client in clients:
                    client.join(30)
                assert not tally.errors, tally.errors
                integrity_check(store)
                node.channel.close()
                node = Node(process, log)
                node.start()
                checked = check_model(node, {n: k for mine in keys for n, k in mine.items()})
                check_derived_state(node, replay, store_engine)
                tally.iterations += 1
        finally:
            node.close()
            store_engine.dispose()
    print(
        f"\ncrash test on {store.split(':')[0]}: {tally.iterations} kills and restarts, "
        f"{tally.acknowledged} acknowledged changes checked ({checked} keys at the end), "
        f"{tally.kills_in_flight} kills during in-flight requests, "
        f"{time.monotonic() - started:.0f} s"
    )
    assert tally.kills_in_flight > 0


@pytest.mark.parametrize("point", POINTS)
def test_a_projection_killed_after_the_commit_applies_the_event_once_at_restart(
    store: str, tmp_path: Path, point: str
) -> None:
    killed = subprocess.run(
        [sys.executable, "-m", "tests.e2e.kill_after_commit", store, point],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    store_engine = sql_engine(store)
    with replaying(store, tmp_path) as replay:
        head = replay.keys.recorder.max_notification_id()
        assert head == 2
        with store_engine.connect() as conn:
            projected = conn.execute(sa.select(catalog.tracking.c.position)).scalar()
            logged = conn.execute(sa.select(sa.func.max(audit.audit_log.c.position))).scalar()
        assert (projected, logged) == POINTS_LEFT_AT[point]
        node = Node(ServeProcess(store), tmp_path / "serve.log")
        try:
            node.start()
            check_derived_state(node, replay, store_engine)
            with store_engine.connect() as conn:
                positions = conn.execute(sa.select(audit.audit_log.c.position)).scalars().all()
            assert sorted(positions) == [1, 2]
            listed = node.keys.ListApiKeys(pb.ListApiKeysRequest(parent=PROJECT), timeout=10)
            assert [k.name for k in listed.api_keys] == [
                f"{PROJECT}/apiKeys/before-crash",
                f"{PROJECT}/apiKeys/the-crash",
            ]
        finally:
            node.close()
            store_engine.dispose()
