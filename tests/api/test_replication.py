"""ReplicationService on a store replica, and edge followers fed by it (in process):
a stream starts with a snapshot, carries every change to the index, resumes from a
position, starts over when it cannot; followers validate what the store holds, chained."""

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import api_keys_pb2_grpc, replication_pb2_grpc, validation_pb2_grpc
from edgekeys.v1 import replication_pb2 as rpb
from edgekeys.v1 import validation_pb2 as vpb
from projections import index
from service.cli.client import Credentials
from service.domain import keyformat
from service.replication import stream as index_stream
from service.runtime.config import Settings
from service.runtime.server import Server
from tests.api.test_metrics import scraped, value
from tests.conftest import START, FakeClock, RunningServer
from tests.e2e.conftest import free_port
from tests.waiting import eventually

LLAMA = "projects/acme/deployments/llama"
MISTRAL = "projects/acme/deployments/mistral"
ACTIVE, DELETED = rpb.IndexChange.STATE_ACTIVE, rpb.IndexChange.STATE_DELETED


class Stream:
    """One StreamIndex call, read message by message."""

    def __init__(self, channel: grpc.Channel, after_position: int = 0) -> None:
        stub = replication_pb2_grpc.ReplicationServiceStub(channel)
        self.call = stub.StreamIndex(rpb.StreamIndexRequest(after_position=after_position))
        self._messages: Iterator[rpb.StreamIndexResponse] = self.call

    def next(self) -> rpb.StreamIndexResponse:
        return next(self._messages)

    def next_changes(self) -> rpb.StreamIndexResponse:
        """The next message that carries changes (heartbeats skipped)."""
        deadline = time.monotonic() + 10
        while not (message := self.next()).changes:
            assert time.monotonic() < deadline, "no change arrived"
        return message

    def close(self) -> None:
        self.call.cancel()


@pytest.fixture
def streams(running: RunningServer) -> Iterator[Callable[[int], Stream]]:
    opened: list[Stream] = []

    def open_stream(after_position: int = 0) -> Stream:
        stream = Stream(running.channel, after_position)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


def status(channel: grpc.Channel) -> rpb.GetReplicaStatusResponse:
    stub = replication_pb2_grpc.ReplicationServiceStub(channel)
    reply: rpb.GetReplicaStatusResponse = stub.GetReplicaStatus(rpb.GetReplicaStatusRequest())
    return reply


def by_name(message: rpb.StreamIndexResponse) -> dict[str, rpb.IndexChange]:
    return {change.api_key: change for change in message.changes}


def test_a_stream_starts_with_a_snapshot_of_the_live_keys_digests_only(
    running: RunningServer, streams: Callable[[int], Stream]
) -> None:
    kept = running.create(deployments=(LLAMA, MISTRAL))
    other = running.create(
        parent="projects/other", deployments=("projects/other/deployments/llama",)
    )
    deleted = running.create()
    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=deleted.api_key.name))
    head = status(running.channel).head_position

    first = streams(0).next()

    assert first.reset and first.snapshot_complete
    assert first.position == head
    assert set(by_name(first)) == {kept.api_key.name, other.api_key.name}
    change = by_name(first)[kept.api_key.name]
    assert change.secret_sha256 == keyformat.digest(kept.secret)
    assert list(change.deployments) == sorted([LLAMA, MISTRAL])
    assert change.state == ACTIVE
    assert change.position == head
    assert not change.HasField("expire_time")
    wire = first.SerializeToString()
    for secret in (kept.secret, other.secret, deleted.secret):
        assert secret.encode() not in wire


def test_a_snapshot_larger_than_a_message_spans_several_and_says_where_it_ends(
    running: RunningServer, streams: Callable[[int], Stream], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_stream, "BATCH", 2)
    names = {running.create().api_key.name for _ in range(5)}

    stream = streams(0)
    messages = [stream.next() for _ in range(3)]

    assert [m.reset for m in messages] == [True, False, False]
    assert [m.snapshot_complete for m in messages] == [False, False, True]
    assert {name for m in messages for name in by_name(m)} == names
    assert not stream.next().changes  # then heartbeats


def test_every_change_to_the_index_streams_as_it_happens(
    running: RunningServer, streams: Callable[[int], Stream]
) -> None:
    stream = streams(0)
    assert stream.next().snapshot_complete  # an empty store: an empty snapshot
    created = running.create(deployments=(LLAMA,))
    name = created.api_key.name

    change = by_name(stream.next_changes())[name]
    assert (change.state, list(change.deployments)) == (ACTIVE, [LLAMA])
    assert change.secret_sha256 == keyformat.digest(created.secret)

    running.keys.AttachDeployment(pb.AttachDeploymentRequest(name=name, deployment=MISTRAL))
    assert list(by_name(stream.next_changes())[name].deployments) == [LLAMA, MISTRAL]

    running.keys.DetachDeployment(pb.DetachDeploymentRequest(name=name, deployment=LLAMA))
    assert list(by_name(stream.next_changes())[name].deployments) == [MISTRAL]

    expiry = Timestamp()
    expiry.FromDatetime(START + timedelta(days=1))
    running.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(
            api_key=pb.ApiKey(name=name, expire_time=expiry),
            update_mask=FieldMask(paths=["expire_time"]),
        )
    )
    assert by_name(stream.next_changes())[name].expire_time == expiry

    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=name))
    message = stream.next_changes()
    assert by_name(message)[name].state == DELETED
    assert message.position == status(running.channel).head_position


def test_a_resumed_stream_sends_only_what_changed_since_once_per_key(
    running: RunningServer, streams: Callable[[int], Stream]
) -> None:
    before = running.create()
    position = status(running.channel).position
    later = running.create(deployments=(LLAMA,)).api_key.name
    running.keys.AttachDeployment(pb.AttachDeploymentRequest(name=later, deployment=MISTRAL))
    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=before.api_key.name))
    head = status(running.channel).head_position

    first = streams(position).next()

    assert not first.reset
    assert first.position == head
    assert [(c.api_key, c.state) for c in first.changes] == [
        (later, ACTIVE),
        (before.api_key.name, DELETED),
    ]
    assert list(first.changes[0].deployments) == [LLAMA, MISTRAL]  # its latest state
    assert [c.position for c in first.changes] == [head - 1, head]


def test_a_stream_at_the_head_gets_heartbeats(
    running: RunningServer, streams: Callable[[int], Stream]
) -> None:
    running.create()
    head = status(running.channel).head_position
    stream = streams(head)
    started = time.monotonic()
    beats = [stream.next() for _ in range(3)]
    assert all(not b.reset and not b.changes and b.position == head for b in beats)
    assert time.monotonic() - started >= 1.5  # one a second, not a busy loop


def test_a_replica_cut_off_from_its_store_sends_followers_no_heartbeats(
    running: RunningServer,
) -> None:
    running.create()
    head = status(running.channel).head_position
    stub = replication_pb2_grpc.ReplicationServiceStub(running.channel)
    call = stub.StreamIndex(rpb.StreamIndexRequest(after_position=head), timeout=4)
    assert next(call).position == head  # a heartbeat
    with running.store_cut_off():
        with pytest.raises(grpc.RpcError) as silent:
            for _ in range(3):
                next(call)
        assert silent.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.StreamIndex(rpb.StreamIndexRequest(after_position=head)))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def small_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "JOURNAL", 3)


def test_a_position_the_journal_no_longer_reaches_gets_a_fresh_snapshot(
    small_journal: None, running: RunningServer, streams: Callable[[int], Stream]
) -> None:
    first = running.create().api_key.name
    position = status(running.channel).position
    names = {first} | {running.create().api_key.name for _ in range(4)}

    message = streams(position).next()

    assert message.reset and message.snapshot_complete
    assert set(by_name(message)) == names


def test_a_position_beyond_the_index_gets_a_fresh_snapshot(
    running: RunningServer, streams: Callable[[int], Stream]
) -> None:
    name = running.create().api_key.name  # the follower's position came from another store
    message = streams(1000).next()
    assert message.reset and set(by_name(message)) == {name}


def test_a_negative_position_is_invalid(
    running: RunningServer, streams: Callable[[int], Stream]
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        streams(-1).next()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_store_replica_reports_its_position_and_the_head(running: RunningServer) -> None:
    running.create()
    running.create()
    reply = status(running.channel)
    assert reply.role == "store"
    assert reply.serving
    assert reply.position == reply.head_position == 2
    assert reply.lag == 0
    assert reply.HasField("last_sync_time")
    assert reply.upstream == ""


# Edge followers, in process.


class RunningFollower:
    """A Server on its own event loop thread."""

    def __init__(
        self,
        upstream_port: int,
        max_staleness: float = 900.0,
        credentials: Credentials | None = None,  # to reach the upstream
        metrics_address: str = "",
    ) -> None:
        self.upstream = f"127.0.0.1:{upstream_port}"
        settings = Settings(
            address="127.0.0.1:0",
            follow=self.upstream,
            max_staleness=max_staleness,
            metrics_address=metrics_address,
            http_address="off",  # two followers in one test: no port both would want
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def start() -> Server:
            reach = credentials.channel(self.upstream) if credentials else None
            server = Server(settings, upstream_credentials=reach)
            await server.start()
            return server

        self.server: Server = self._run(start())
        self.port = self.server.port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def health(self) -> "health_pb2.HealthCheckResponse.ServingStatus":
        reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest())
        return reply.status

    def verdict(self, secret: str, deployment: str = LLAMA) -> "vpb.Verdict":
        stub = validation_pb2_grpc.ValidationServiceStub(self.channel)
        reply = stub.ValidateApiKey(vpb.ValidateApiKeyRequest(secret=secret, deployment=deployment))
        verdict: vpb.Verdict = reply.verdict
        return verdict

    def stop(self) -> None:
        self.channel.close()
        self._run(self.server.stop(0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def followers() -> Iterator[Callable[..., RunningFollower]]:
    started: list[RunningFollower] = []

    def start(upstream_port: int, **options: Any) -> RunningFollower:
        follower = RunningFollower(upstream_port, **options)
        started.append(follower)
        return follower

    yield start
    for follower in reversed(started):
        follower.stop()


def test_a_follower_of_a_follower_validates_what_the_store_holds(
    running: RunningServer, followers: Callable[..., RunningFollower]
) -> None:
    kept = running.create()
    edge = followers(running.server.port)
    further = followers(edge.port)
    eventually(further.health, health_pb2.HealthCheckResponse.SERVING)
    assert further.verdict(kept.secret) == vpb.VERDICT_ALLOWED

    revoked = running.create()
    eventually(lambda: further.verdict(revoked.secret), vpb.VERDICT_ALLOWED)
    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=revoked.api_key.name))
    eventually(lambda: further.verdict(revoked.secret), vpb.VERDICT_NOT_FOUND)

    reply = status(further.channel)
    assert (reply.role, reply.upstream, reply.serving) == (
        "follower",
        f"127.0.0.1:{edge.port}",
        True,
    )
    assert reply.position == reply.head_position == status(running.channel).head_position
    assert reply.lag == 0
    assert reply.HasField("last_sync_time")


def test_a_follower_reports_its_lag_behind_the_upstream_and_its_verdicts(
    running: RunningServer, followers: Callable[..., RunningFollower]
) -> None:
    kept = running.create()
    edge = followers(running.server.port, metrics_address="127.0.0.1:0")
    eventually(edge.health, health_pb2.HealthCheckResponse.SERVING)
    running.create()
    assert edge.server.metrics_port

    def metric(name: str, **labels: str) -> float:
        assert edge.server.metrics_port
        return value(scraped(edge.server.metrics_port), name, **labels)

    eventually(lambda: metric("edgekeys_index_keys"), 2.0)
    assert metric("edgekeys_projection_lag_events", projection="index") == 0
    assert metric("edgekeys_source_reachable") == 1
    assert 0 <= metric("edgekeys_projection_lag_seconds", projection="index") < 60
    assert edge.verdict(kept.secret) == vpb.VERDICT_ALLOWED
    assert metric("edgekeys_validations_total", verdict="VERDICT_ALLOWED") == 1
    assert metric("edgekeys_rpc_duration_seconds_count", method="ValidateApiKey") == 1


def test_a_follower_serves_no_management_and_no_audit(
    running: RunningServer, followers: Callable[..., RunningFollower]
) -> None:
    edge = followers(running.server.port)
    eventually(edge.health, health_pb2.HealthCheckResponse.SERVING)
    with pytest.raises(grpc.RpcError) as error:
        api_keys_pb2_grpc.ApiKeyServiceStub(edge.channel).ListApiKeys(
            pb.ListApiKeysRequest(parent="projects/acme")
        )
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_follower_that_never_reached_its_upstream_fails_closed(
    followers: Callable[..., RunningFollower],
) -> None:
    edge = followers(free_port(), metrics_address="127.0.0.1:0")  # nothing listens there
    assert edge.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as error:
        edge.verdict(keyformat.new_secret())
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "has not yet received the index" in str(error.value.details())
    assert edge.server.metrics_port
    samples = scraped(edge.server.metrics_port)
    errors = "edgekeys_rpc_errors_total"
    assert value(samples, errors, method="ValidateApiKey", code="UNAVAILABLE") == 1
    assert value(samples, "edgekeys_validations_total", verdict="VERDICT_NOT_FOUND") == 0
    assert value(samples, "edgekeys_source_reachable") == 0


def test_a_follower_cut_off_from_its_upstream_lets_the_followers_behind_it_go_stale(
    tmp_path: Path, clock: FakeClock, followers: Callable[..., RunningFollower]
) -> None:
    store = RunningServer(database=tmp_path / "edgekeys.db", clock=clock).start()
    try:
        edge = followers(store.server.port)  # tolerates a long outage
        further = followers(edge.port, max_staleness=1.0)
        eventually(further.health, health_pb2.HealthCheckResponse.SERVING)
    finally:
        store.stop()

    # The edge is not stale yet, but it no longer hears the source: it must not keep
    # the follower behind it looking fresh.
    eventually(further.health, health_pb2.HealthCheckResponse.NOT_SERVING, within=15)
    assert edge.health() == health_pb2.HealthCheckResponse.SERVING
