"""Rotation without downtime, finding the key behind a leaked secret, keys close to
expiring, and when each key was last used."""

from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from tests.api.test_authz import check
from tests.api.test_lifecycle import stamp
from tests.api.test_replication import RunningFollower
from tests.conftest import RunningServer
from tests.waiting import eventually

pytestmark = pytest.mark.both_stores

LLAMA = "projects/acme/deployments/llama"
HOUR = 3600


def verdict(server: RunningServer, secret: str) -> "vpb.Verdict":
    request = vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)
    found: vpb.Verdict = server.validation.ValidateApiKey(request).verdict
    return found


def rotate(
    server: RunningServer, name: str, seconds: int, **fields: str
) -> pb.RotateApiKeyResponse:
    response: pb.RotateApiKeyResponse = server.keys.RotateApiKey(
        pb.RotateApiKeyRequest(name=name, grace_period=Duration(seconds=seconds), **fields)
    )
    return response


def test_the_old_secret_works_until_the_grace_period_ends(running: RunningServer) -> None:
    created = running.create()
    name, old = created.api_key.name, created.secret
    rotated = rotate(running, name, HOUR)
    new = rotated.secret
    assert new != old and new.startswith("edk_")
    assert rotated.api_key.secret_hint != created.api_key.secret_hint
    until = rotated.api_key.previous_secret_expire_time.ToDatetime()
    assert until == (running.clock.now + timedelta(hours=1)).replace(tzinfo=None)
    assert (verdict(running, old), verdict(running, new)) == (vpb.VERDICT_ALLOWED,) * 2
    assert not check(running, {"x-api-key": old}).HasField("denied_response")

    running.clock.advance(seconds=HOUR - 0.000001)  # the last microsecond of grace
    assert verdict(running, old) == vpb.VERDICT_ALLOWED
    running.restart()  # the grace survives a restart (index loaded from the catalog)
    assert verdict(running, old) == vpb.VERDICT_ALLOWED
    running.clock.advance(seconds=0.000001)
    assert (verdict(running, old), verdict(running, new)) == (
        vpb.VERDICT_NOT_FOUND,
        vpb.VERDICT_ALLOWED,
    )
    assert check(running, {"x-api-key": old}).denied_response.status.code == 401


def test_the_grace_never_outlasts_the_key(running: RunningServer) -> None:
    running.clock.advance(seconds=1)
    expiring = running.create(expire_time=stamp(running.clock.now + timedelta(minutes=30)))
    rotated = rotate(running, expiring.api_key.name, 7 * 24 * HOUR)
    assert rotated.api_key.previous_secret_expire_time == expiring.api_key.expire_time
    running.clock.advance(minutes=30)
    assert verdict(running, expiring.secret) == vpb.VERDICT_NOT_FOUND
    assert verdict(running, rotated.secret) == vpb.VERDICT_EXPIRED


def test_no_grace_and_a_second_rotation_end_the_old_secret_at_once(
    running: RunningServer,
) -> None:
    first = running.create()
    name = first.api_key.name
    second = rotate(running, name, 0)
    assert not second.api_key.HasField("previous_secret_expire_time")
    assert verdict(running, first.secret) == vpb.VERDICT_NOT_FOUND
    third = rotate(running, name, HOUR)
    fourth = rotate(running, name, HOUR)
    assert [verdict(running, s.secret) for s in (second, third, fourth)] == [
        vpb.VERDICT_NOT_FOUND,  # rotated away with no grace
        vpb.VERDICT_ALLOWED,  # the one before the last: in its grace
        vpb.VERDICT_ALLOWED,
    ]
    rotate(running, name, HOUR)
    assert verdict(running, third.secret) == vpb.VERDICT_NOT_FOUND


def test_a_retried_rotation_rotates_once_and_shows_no_secret(running: RunningServer) -> None:
    created = running.create()
    request_id = "6f1c2a8e-1c1e-4a57-9d64-0c7d1d0b5a11"
    first = rotate(running, created.api_key.name, HOUR, request_id=request_id)
    again = rotate(running, created.api_key.name, HOUR, request_id=request_id)
    assert again.secret == "" and again.api_key.etag == first.api_key.etag
    assert verdict(running, first.secret) == vpb.VERDICT_ALLOWED
    with pytest.raises(grpc.RpcError) as stale:
        rotate(running, created.api_key.name, HOUR, etag=created.api_key.etag)
    assert stale.value.code() == grpc.StatusCode.ABORTED
    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=created.api_key.name))
    with pytest.raises(grpc.RpcError) as deleted:
        rotate(running, created.api_key.name, HOUR)
    assert deleted.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_audit_log_shows_the_rotation_and_no_secret(running: RunningServer) -> None:
    created = running.create()
    rotated = rotate(running, created.api_key.name, HOUR)
    history = audit_pb2_grpc.AuditServiceStub(running.channel).ListApiKeyEvents(
        apb.ListApiKeyEventsRequest(name=created.api_key.name)
    )
    event = history.events[-1]
    assert event.event_type == "SecretRotated"
    assert event.secret_rotated.secret_hint == rotated.api_key.secret_hint
    assert event.secret_rotated.previous_secret_expire_time == (
        rotated.api_key.previous_secret_expire_time
    )
    assert rotated.secret not in str(history) and created.secret not in str(history)


def test_an_edge_follower_honours_both_secrets_during_the_grace(running: RunningServer) -> None:
    created = running.create()
    rotated = rotate(running, created.api_key.name, HOUR)
    edge = RunningFollower(running.server.port)
    try:
        eventually(edge.health, health_pb2.HealthCheckResponse.SERVING)
        assert edge.verdict(rotated.secret) == vpb.VERDICT_ALLOWED
        assert edge.verdict(created.secret) == vpb.VERDICT_ALLOWED
    finally:
        edge.stop()


def test_lookup_finds_the_key_behind_a_current_or_previous_secret(
    running: RunningServer,
) -> None:
    created = running.create()
    rotated = rotate(running, created.api_key.name, 0)
    running.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=created.api_key.name))
    for secret in (created.secret, rotated.secret):
        found = running.keys.LookupApiKey(pb.LookupApiKeyRequest(secret=secret)).api_key
        assert (found.name, found.state) == (created.api_key.name, pb.ApiKey.STATE_DELETED)


def test_keys_close_to_expiring_soonest_first_page_by_page(running: RunningServer) -> None:
    now = running.clock.now
    days = [5, 1, 30, 3, 1]
    made = [
        running.create(display_name=f"k{i}", expire_time=stamp(now + timedelta(days=d)))
        for i, d in enumerate(days)
    ]
    running.create(display_name="never")
    pages, token = [], ""
    while True:
        page = running.keys.ListApiKeys(
            pb.ListApiKeysRequest(
                parent="projects/acme",
                order_by="expire_time",
                expire_before=stamp(now + timedelta(days=10)),
                page_size=2,
                page_token=token,
            )
        )
        pages.append([k.display_name for k in page.api_keys])
        if not (token := page.next_page_token):
            break
    assert pages == [["k1", "k4"], ["k3", "k0"]]
    everything = running.keys.ListApiKeys(
        pb.ListApiKeysRequest(parent="projects/acme", order_by="expire_time")
    )
    assert len(everything.api_keys) == len(made)  # a key that never expires has no place


def test_last_use_time_follows_successful_validations(
    serving: Callable[..., RunningServer],
) -> None:
    server = serving(last_use_interval=0.05)
    used, unused = server.create(), server.create()
    assert verdict(server, unused.secret + "x") == vpb.VERDICT_MALFORMED
    server.clock.advance(minutes=5)
    assert verdict(server, used.secret) == vpb.VERDICT_ALLOWED
    when = stamp(server.clock.now)

    def listed() -> dict[str, Timestamp | None]:
        keys = server.keys.ListApiKeys(pb.ListApiKeysRequest(parent="projects/acme")).api_keys
        return {k.name: k.last_use_time if k.HasField("last_use_time") else None for k in keys}

    eventually(listed, {used.api_key.name: when, unused.api_key.name: None})
    got = server.keys.GetApiKey(pb.GetApiKeyRequest(name=used.api_key.name)).api_key
    assert got.last_use_time == when
    server.restart()
    assert listed()[used.api_key.name] == when
