"""Several `edgekeys serve` processes on one PostgreSQL store (a database of its own per
test): what one replica changes, the others answer within moments; no update is lost;
and a replica cut off from the database keeps validating and refuses writes fast."""

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from service.replication.listener import APPLICATION_NAME
from tests.e2e.conftest import LLAMA, PROJECT, Node, ServeProcess
from tests.postgres import fresh_database, terminate, terminate_where
from tests.tcp_proxy import TcpProxy
from tests.waiting import eventually

MISTRAL = f"{PROJECT}/deployments/mistral"


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def replicas(database: str, nodes: Callable[..., Node]) -> Callable[..., Node]:
    """Starts `edgekeys serve` processes on the test's database (or another URL)."""

    def start(url: str = database, **settings: str) -> Node:
        replica = nodes(ServeProcess(url, **settings))
        replica.start()
        return replica

    return start


def test_changes_through_one_replica_are_answered_by_the_other_at_once(
    replicas: Callable[..., Node],
) -> None:
    # B polls only every 30 s: anything faster is LISTEN/NOTIFY at work.
    a, b = replicas(), replicas(poll_interval="30")
    created = a.create(LLAMA, MISTRAL)
    name, secret = created.api_key.name, created.secret
    eventually(lambda: b.verdict(secret), vpb.VERDICT_ALLOWED, within=5)

    a.keys.DetachDeployment(pb.DetachDeploymentRequest(name=name, deployment=MISTRAL))
    eventually(lambda: b.verdict(secret, MISTRAL), vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED, 5)

    soon = datetime.now(UTC) + timedelta(seconds=1)
    expiry = Timestamp()
    expiry.FromDatetime(soon)
    a.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(
            api_key=pb.ApiKey(name=name, expire_time=expiry),
            update_mask=FieldMask(paths=["expire_time"]),
        )
    )
    eventually(lambda: b.verdict(secret), vpb.VERDICT_EXPIRED, within=6)

    other = a.create(LLAMA)
    eventually(lambda: b.verdict(other.secret), vpb.VERDICT_ALLOWED, within=5)
    a.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=other.api_key.name))
    eventually(lambda: b.verdict(other.secret), vpb.VERDICT_NOT_FOUND, within=5)

    # The catalog is shared, and each event is in it once.
    listed = b.keys.ListApiKeys(pb.ListApiKeysRequest(parent=PROJECT, show_deleted=True))
    assert sorted(k.name for k in listed.api_keys) == sorted([name, other.api_key.name])
    assert [k.deployments for k in listed.api_keys if k.name == name] == [[LLAMA]]


def test_polling_brings_a_replica_back_after_its_listen_connection_is_killed(
    replicas: Callable[..., Node], database: str
) -> None:
    a, b = replicas(), replicas(poll_interval="0.5")
    assert b.process.process is not None
    listener = f"{APPLICATION_NAME} {b.process.process.pid}"
    eventually(lambda: terminate(database, listener), 1, within=10)
    created = a.create(LLAMA)
    eventually(lambda: b.verdict(created.secret), vpb.VERDICT_ALLOWED, within=0.5 + 1.5)
    # And the listener is supervised: it comes back by itself.
    eventually(lambda: terminate(database, listener), 1, within=10)


def test_32_concurrent_attachments_over_two_replicas_are_all_kept(
    replicas: Callable[..., Node],
) -> None:
    a, b = replicas(), replicas()
    name = a.create().api_key.name
    deployments = [f"{PROJECT}/deployments/model-{i}" for i in range(32)]
    start = threading.Barrier(32)
    errors: list[Exception] = []

    def attach(i: int) -> None:
        replica = (a, b)[i % 2]
        start.wait()
        try:
            replica.keys.AttachDeployment(
                pb.AttachDeploymentRequest(name=name, deployment=deployments[i]), timeout=30
            )
        except grpc.RpcError as error:
            errors.append(error)

    threads = [threading.Thread(target=attach, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for replica in (a, b):
        key = replica.keys.GetApiKey(pb.GetApiKeyRequest(name=name)).api_key
        assert sorted(key.deployments) == sorted(deployments)
        assert key.etag == "33"
        # Both replicas fed the shared catalog and audit log: each event is in them once.
        [listed] = replica.keys.ListApiKeys(pb.ListApiKeysRequest(parent=PROJECT)).api_keys
        assert sorted(listed.deployments) == sorted(deployments)
        audit = audit_pb2_grpc.AuditServiceStub(replica.channel)
        history = audit.ListApiKeyEvents(apb.ListApiKeyEventsRequest(name=name, page_size=100))
        assert [e.version for e in history.events] == list(range(1, 34))
        verified = audit.VerifyAuditLog(apb.VerifyAuditLogRequest())
        assert (verified.ok, verified.events_checked) == (True, 33)


def test_of_two_updates_carrying_the_same_etag_exactly_one_wins(
    replicas: Callable[..., Node],
) -> None:
    a, b = replicas(), replicas()
    key = a.create(LLAMA).api_key
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def rename(replica: Node, display_name: str) -> None:
        request = pb.UpdateApiKeyRequest(
            api_key=pb.ApiKey(name=key.name, display_name=display_name, etag=key.etag),
            update_mask=FieldMask(paths=["display_name"]),
        )
        start.wait()
        try:
            replica.keys.UpdateApiKey(request, timeout=30)
            outcomes.append("ok")
        except grpc.RpcError as error:
            outcomes.append(error.code().name)

    threads = [
        threading.Thread(target=rename, args=(a, "by a")),
        threading.Thread(target=rename, args=(b, "by b")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ABORTED", "ok"]
    assert a.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name)).api_key.etag == "2"


def test_a_replica_cut_off_from_the_database_validates_from_memory_and_refuses_writes(
    replicas: Callable[..., Node], database: str
) -> None:
    host_port = database.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    try:
        a = replicas()
        b = replicas(database.replace(host_port, f"127.0.0.1:{proxy.port}"))
        kept, revoked = a.create(LLAMA), a.create(LLAMA)
        eventually(lambda: b.verdict(revoked.secret), vpb.VERDICT_ALLOWED, within=5)

        proxy.cut()
        assert b.verdict(kept.secret) == vpb.VERDICT_ALLOWED
        a.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=revoked.api_key.name))

        def write_status() -> grpc.StatusCode:
            began = time.monotonic()
            try:
                b.create(LLAMA)
            except grpc.RpcError as error:
                assert time.monotonic() - began < 3, "a write during the outage hung"
                assert "unreachable" in (error.details() or "")
                return error.code()
            return grpc.StatusCode.OK

        eventually(write_status, grpc.StatusCode.UNAVAILABLE, within=10)
        assert b.verdict(kept.secret) == vpb.VERDICT_ALLOWED  # fail-static
        began = time.monotonic()
        assert b.status().position >= 2  # answered from memory, without waiting on the store
        assert time.monotonic() - began < 2
        store_health = b.health_stub.Check(
            health_pb2.HealthCheckRequest(service="edgekeys.v1.ApiKeyService")
        )
        assert store_health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        overall = b.health_stub.Check(health_pb2.HealthCheckRequest())
        assert overall.status == health_pb2.HealthCheckResponse.SERVING

        proxy.restore()  # no restart of B
        eventually(lambda: b.verdict(revoked.secret), vpb.VERDICT_NOT_FOUND, within=15)
        eventually(write_status, grpc.StatusCode.OK, within=15)
        assert b.verdict(kept.secret) == vpb.VERDICT_ALLOWED
    finally:
        proxy.close()


class Killer:
    """Terminates, every `interval` seconds until stopped, the backends of the database
    that `match` selects (an SQL condition on pg_stat_activity); counts the kills."""

    def __init__(self, database: str, match: str, interval: float = 0.2) -> None:
        self.database, self.match, self.interval = database, match, interval
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Killer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.kills += terminate_where(self.database, self.match)


def write_through(replica: Node, seconds: float, writers: int = 32) -> tuple[list[str], list[str]]:
    """`writers` clients creating keys through `replica` for `seconds`, each also
    attaching a deployment to what it made: (the names acknowledged, the error codes)."""
    made: list[str] = []
    codes: list[str] = []
    deadline = time.monotonic() + seconds

    def write() -> None:
        while time.monotonic() < deadline:
            try:
                # As the attach below: with connections killed every 50 ms, a write that
                # does reach the database may wait on reconnections (2 s each at most) for
                # itself and its projections, behind 31 others; slow, not an error.
                name = replica.create(LLAMA, timeout=30).api_key.name
                replica.keys.AttachDeployment(
                    pb.AttachDeploymentRequest(name=name, deployment=MISTRAL), timeout=30
                )
                made.append(name)
            except grpc.RpcError as error:
                codes.append(error.code().name)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return made, codes


def test_a_replica_whose_listen_connection_keeps_dying_takes_every_write_and_still_follows(
    replicas: Callable[..., Node], database: str
) -> None:
    a, b = replicas(), replicas(poll_interval="0.5")
    assert b.process.process is not None
    listener = f"application_name = '{APPLICATION_NAME} {b.process.process.pid}'"
    with Killer(database, listener) as killer:
        made, codes = write_through(b, seconds=8)
        # Meanwhile, what another replica writes reaches B by polling.
        created = a.create(LLAMA)
        eventually(lambda: b.verdict(created.secret), vpb.VERDICT_ALLOWED, within=0.5 + 1.5)
    assert killer.kills >= 5
    assert codes == []
    assert len(made) > 50
    for name in made:  # nothing lost, on either replica
        for replica in (a, b):
            key = replica.keys.GetApiKey(pb.GetApiKeyRequest(name=name)).api_key
            assert list(key.deployments) == [LLAMA, MISTRAL]


def test_a_replica_whose_data_connections_die_refuses_writes_and_takes_them_again(
    replicas: Callable[..., Node], database: str
) -> None:
    b = replicas(poll_interval="0.5")
    assert b.process.process is not None
    every_connection = "pid <> pg_backend_pid() AND backend_type = 'client backend'"
    with Killer(database, every_connection, interval=0.05) as killer:
        made, codes = write_through(b, seconds=5)
    assert killer.kills > 0
    assert "UNAVAILABLE" in codes
    assert set(codes) == {"UNAVAILABLE"}

    def write() -> str:
        try:
            b.create(LLAMA)
        except grpc.RpcError as error:
            return str(error.code().name)
        return "OK"

    eventually(write, "OK", within=15)  # the pools reconnect by themselves
    for name in made:  # what was acknowledged is stored
        assert list(b.keys.GetApiKey(pb.GetApiKeyRequest(name=name)).api_key.deployments) == [
            LLAMA,
            MISTRAL,
        ]
