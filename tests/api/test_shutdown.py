"""Stopping does not wait for a long audit check: not the one every start runs in the
background, and not a VerifyAuditLog in flight, which fails UNAVAILABLE instead."""

import threading
import time
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from projections import audit_log as audit
from projections.audit_log import AuditLog
from tests.conftest import RunningServer


def endless(
    self: AuditLog, walk: audit.Walk, project: str | None, logged_head: int, batch: int
) -> audit.Walk:
    """A sound log that takes forever to walk: one more chunk every 10 ms, never done."""
    time.sleep(0.01)
    walk.after += 1
    return walk


def test_stopping_interrupts_audit_checks(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AuditLog, "_chunk", endless)
    running.restart()  # so that the start-up check walks the endless log too
    outcome: list[Any] = []

    def verify() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{running.server.port}") as channel:
            try:
                audit_pb2_grpc.AuditServiceStub(channel).VerifyAuditLog(
                    apb.VerifyAuditLogRequest(), timeout=30
                )
            except grpc.RpcError as error:
                outcome.append(error)

    caller = threading.Thread(target=verify)
    caller.start()
    time.sleep(0.3)
    started = time.monotonic()
    running.stop(grace=5)
    caller.join(10)
    assert time.monotonic() - started < 3
    [error] = outcome
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(error)
    assert status is not None and "SERVER_STOPPING" in str(status.details)
