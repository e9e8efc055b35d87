"""What ValidateApiKey and Check do per request: no database, no exception, no log line,
and a mistyped key costs no hashing and no lookup."""

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from edgekeys.v1 import validation_pb2 as vpb
from edgekeys.vendor.envoy.service.auth.v3 import external_auth_pb2_grpc
from service.domain import keyformat
from service.security import callers
from tests.api.test_authz import check_request
from tests.conftest import FakeClock, RunningServer

LLAMA = "projects/acme/deployments/llama"
OURS = ("/service/", "/projections/")


class Observer:
    """Records, on the server's loop thread, calls into sqlite3 and exceptions raised
    in edgekeys' own code."""

    def __init__(self) -> None:
        self.sqlite_calls: list[str] = []
        self.exceptions: list[str] = []

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and type(getattr(arg, "__self__", None)).__module__ == "sqlite3":
            self.sqlite_calls.append(arg.__qualname__)

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        # A coroutine's return shows up as StopIteration: that is no raised exception.
        if (
            event == "exception"
            and arg[0] is not StopIteration
            and any(part in frame.f_code.co_filename for part in OURS)
        ):
            self.exceptions.append(f"{arg[0].__name__} in {frame.f_code.co_name}")
        return self.trace

    def start(self) -> None:
        sys.setprofile(self.profile)
        sys.settrace(self.trace)

    @staticmethod
    def stop() -> None:
        sys.setprofile(None)
        sys.settrace(None)


def secrets_of_every_verdict(running: RunningServer) -> list[str]:
    live = running.create().secret
    return [
        live,  # allowed, and not allowed at another deployment
        live[:-1] + ("A" if live[-1] != "A" else "B"),  # bad checksum
        "edk_" + "0" * 49,  # well-formed shape, bad checksum
        "not a key",
        "",
    ]


@pytest.fixture(params=["anonymous", "with a callers file"])
def served(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[RunningServer]:
    """The server as `make run` starts it, or admitting one token with every role."""
    options, token = {}, ""
    if request.param != "anonymous":
        token, digest = callers.new_token()
        path = tmp_path / "callers.toml"
        path.write_text(callers.caller_table("everyone", digest, callers.ROLES, ["*"], None))
        options = {"callers_file": str(path)}
    server = RunningServer(tmp_path / "edgekeys.db", clock, options=options, token=token)
    yield server.start()
    server.stop()


def test_validation_and_check_touch_no_database_and_raise_nothing(
    served: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    running = served
    secrets = secrets_of_every_verdict(running)
    authorization = external_auth_pb2_grpc.AuthorizationStub(running.channel)
    observer = Observer()
    running.on_server_thread(observer.start)
    try:
        with caplog.at_level(logging.DEBUG):
            for secret in secrets:
                for deployment in (LLAMA, "projects/acme/deployments/other"):
                    request = vpb.ValidateApiKeyRequest(secret=secret, deployment=deployment)
                    running.validation.ValidateApiKey(request)
                    running.validation.ValidateApiKeys(
                        vpb.ValidateApiKeysRequest(requests=[request])
                    )
                    authorization.Check(check_request({"x-api-key": secret}, deployment))
    finally:
        running.on_server_thread(Observer.stop)

    assert observer.sqlite_calls == []
    assert observer.exceptions == []
    assert [
        r for r in caplog.records if r.name.startswith(("service", "projections", "edgekeys"))
    ] == []
    assert all(s not in caplog.text for s in secrets if s)


def test_the_observer_does_see_database_access_and_exceptions(running: RunningServer) -> None:
    # The same observer notices what the test above says is absent.
    observer = Observer()
    running.on_server_thread(observer.start)
    try:
        running.on_server_thread(
            lambda: running.server.store.catalog.list("acme", after=0, limit=1)
        )
        with pytest.raises(Exception, match="projects/x"):
            running.on_server_thread(lambda: running.server.store.keys.get_key("projects/x"))
    finally:
        running.on_server_thread(Observer.stop)
    assert observer.sqlite_calls
    assert observer.exceptions


def test_a_bad_checksum_is_refused_before_hashing_or_lookup(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = running.create().secret
    digests: list[str] = []
    real_digest = keyformat.digest

    def counting_digest(secret: str) -> bytes:
        digests.append(secret)
        return real_digest(secret)

    monkeypatch.setattr(keyformat, "digest", counting_digest)
    mistyped = live[:20] + ("x" if live[20] != "x" else "y") + live[21:]
    for secret in (mistyped, live[:-1], "edk_" + "0" * 49):
        reply = running.validation.ValidateApiKey(
            vpb.ValidateApiKeyRequest(secret=secret, deployment=LLAMA)
        )
        assert reply.verdict == vpb.VERDICT_MALFORMED
    assert digests == []
    running.validation.ValidateApiKey(vpb.ValidateApiKeyRequest(secret=live, deployment=LLAMA))
    assert digests == [live]
