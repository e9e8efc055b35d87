"""`edgekeys serve --follow`: a real edge follower process fed by a real upstream. It
validates what the upstream holds, keeps validating through a short outage, fails
closed after its max staleness, and resumes (not starts over) when the upstream returns."""

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from tests.e2e.conftest import LLAMA, PROJECT, Node, ServeProcess
from tests.waiting import eventually

T = TypeVar("T")
MISTRAL = f"{PROJECT}/deployments/mistral"
MAX_STALENESS = 3.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def follower_process(tmp_path: Path, upstream: ServeProcess) -> ServeProcess:
    # A database URL is set only to show that a follower never opens it.
    return ServeProcess(
        tmp_path / "follower.db",
        follow=upstream.address,
        max_staleness=str(MAX_STALENESS),
        log_level="INFO",
    )


def test_an_edge_follower_serves_fails_closed_when_cut_off_and_resumes(
    tmp_path: Path, nodes: Callable[[ServeProcess, Path | None], Node]
) -> None:
    database = tmp_path / "edgekeys.db"
    upstream = nodes(ServeProcess(database), None)
    upstream.start()
    kept = upstream.create(LLAMA, MISTRAL)
    revoked_before = upstream.create(LLAMA)
    revoked_while_cut_off = upstream.create(LLAMA)

    follower = nodes(follower_process(tmp_path, upstream.process), tmp_path / "follower.log")
    follower.start()

    # It validates what the upstream holds, and follows its changes.
    assert follower.verdict(kept.secret) == vpb.VERDICT_ALLOWED
    assert follower.verdict(kept.secret, MISTRAL) == vpb.VERDICT_ALLOWED
    later = upstream.create(LLAMA)
    eventually(lambda: follower.verdict(later.secret), vpb.VERDICT_ALLOWED)
    upstream.keys.DetachDeployment(
        pb.DetachDeploymentRequest(name=kept.api_key.name, deployment=MISTRAL)
    )
    eventually(lambda: follower.verdict(kept.secret, MISTRAL), vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED)
    upstream.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=revoked_before.api_key.name))
    eventually(lambda: follower.verdict(revoked_before.secret), vpb.VERDICT_NOT_FOUND)

    # It has no database and manages no keys.
    with pytest.raises(grpc.RpcError) as error:
        follower.keys.GetApiKey(pb.GetApiKeyRequest(name=kept.api_key.name), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not (tmp_path / "follower.db").exists()

    head = upstream.status().head_position
    eventually(lambda: follower.status().position, head)
    status = follower.status()
    assert (status.role, status.upstream, status.serving, status.lag) == (
        "follower",
        upstream.process.address,
        True,
        0,
    )

    # The upstream disappears: the follower keeps answering, within its max staleness...
    upstream.kill()
    cut_off = time.monotonic()
    assert follower.verdict(kept.secret) == vpb.VERDICT_ALLOWED
    assert follower.health() == SERVING
    # ...then fails closed.
    eventually(follower.health, NOT_SERVING, within=MAX_STALENESS + 10)
    served_for = time.monotonic() - cut_off
    # The last heartbeat came at most a second before the kill; health is checked twice a second.
    assert MAX_STALENESS - 1.5 <= served_for <= MAX_STALENESS + 3
    with pytest.raises(grpc.RpcError) as error:
        follower.verdict(kept.secret)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"has not heard from its upstream {upstream.process.address}" in str(
        error.value.details()
    )
    assert "failing closed" in str(error.value.details())
    denied = follower.check(kept.secret)
    assert denied.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert denied.denied_response.status.code == 503
    assert not follower.status().serving

    # A key is revoked while the follower is cut off: through another process on the
    # same store, since its upstream is down.
    writer = nodes(ServeProcess(database), None)
    writer.start()
    writer.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=revoked_while_cut_off.api_key.name))
    writer.close()

    # The upstream returns on the same port and store: the follower resumes from its
    # position (no second snapshot) and serves again, the revocation included.
    upstream.start()
    eventually(follower.health, SERVING)
    eventually(lambda: follower.verdict(revoked_while_cut_off.secret), vpb.VERDICT_NOT_FOUND)
    assert follower.verdict(kept.secret) == vpb.VERDICT_ALLOWED
    log = follower.log_text()
    assert log.count("index loaded from") == 1, log
    assert f"resumed following {upstream.process.address} after position {head}" in log, log
    eventually(lambda: follower.status().position, upstream.status().head_position)


def test_a_follower_waits_not_serving_for_an_upstream_that_is_not_there_yet(
    tmp_path: Path, nodes: Callable[[ServeProcess, Path | None], Node]
) -> None:
    upstream = nodes(ServeProcess(tmp_path / "edgekeys.db"), None)
    follower = nodes(follower_process(tmp_path, upstream.process), tmp_path / "follower.log")
    follower.start(wait=False)
    eventually(follower.health_or_code, NOT_SERVING)
    with pytest.raises(grpc.RpcError) as error:
        follower.verdict("edk_" + "0" * 49)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "has not yet received the index from its upstream" in str(error.value.details())

    upstream.start()
    created = upstream.create(LLAMA)
    eventually(follower.health, SERVING)
    eventually(lambda: follower.verdict(created.secret), vpb.VERDICT_ALLOWED)
