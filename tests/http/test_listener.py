"""The HTTP listener serves the very same calls as gRPC: the same callers gate (Bearer,
Gcore's APIKey scheme, mTLS), the same actor, rate limits and metrics; TLS from the same
files; a server stream as NDJSON; `off` serves nothing."""

import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from service.security import callers
from tests.api.test_metrics import parsed, value
from tests.api.test_tls import SUBJECT, callers_file, tls_options
from tests.certs import Authority, Issued
from tests.conftest import RunningServer

LLAMA = "projects/acme/deployments/llama"
ON = {"http_address": "127.0.0.1:0"}


def call(
    base: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    authorization: str = "",
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, Any]]:
    """An HTTP call: its status and JSON body."""
    headers = {"content-type": "application/json"}
    if authorization:
        headers["authorization"] = authorization
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def base(server: RunningServer, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.server.http_port}"


def reason(body: dict[str, Any]) -> str:
    return str(body["error"]["details"][0]["reason"])


def create(url: str, authorization: str = "", parent: str = "projects/acme") -> Any:
    return call(
        url,
        "POST",
        f"/v1/{parent}/apiKeys",
        {"displayName": "over http", "deployments": [f"{parent}/deployments/llama"]},
        authorization,
    )


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path)


def test_http_calls_pass_the_callers_gate_and_record_the_caller_as_actor(
    guarded: tuple[RunningServer, dict[str, str]],
) -> None:
    server, tokens = guarded
    url = base(server)
    status, body = create(url)
    assert (status, reason(body)) == (401, "CALLER_UNAUTHENTICATED")
    assert create(url, "Bearer ekc_not-a-caller")[0] == 401
    status, body = create(url, f"Bearer {tokens['edge']}")
    assert (status, reason(body)) == (403, "ROLE_NOT_ALLOWED")
    status, body = create(url, f"Bearer {tokens['portal']}", parent="projects/other")
    assert (status, reason(body)) == (403, "PROJECT_NOT_ALLOWED")

    status, by_bearer = create(url, f"Bearer {tokens['portal']}")
    assert status == 200
    status, by_apikey = create(url, f"APIKey {tokens['portal']}")  # as Gcore's SDK sends it
    assert status == 200
    for created in (by_bearer, by_apikey):
        name = created["apiKey"]["name"]
        history = audit_pb2_grpc.AuditServiceStub(server.channel).ListApiKeyEvents(
            apb.ListApiKeyEventsRequest(name=name),
            metadata=[("authorization", f"Bearer {tokens['portal']}")],
        )
        assert [event.actor for event in history.events] == ["portal"]
    # and gRPC takes the APIKey scheme as well
    verdict = server.validation.ValidateApiKey(
        vpb.ValidateApiKeyRequest(secret=by_apikey["secret"], deployment=LLAMA),
        metadata=[("authorization", f"APIKey {tokens['edge']}")],
    )
    assert verdict.verdict == vpb.VERDICT_ALLOWED


def test_http_and_grpc_share_the_failure_budget_of_a_client(
    serving: Callable[..., RunningServer],
) -> None:
    server = serving(failed_validation_burst=3, **ON)
    check = {"secret": "edk_" + "x" * 49, "clientAddress": "10.0.0.7"}
    for _ in range(3):
        status, body = call(base(server), "POST", f"/v1/{LLAMA}:validateApiKey", check)
        assert (status, body["verdict"]) == (200, "VERDICT_MALFORMED")
    limited = server.validation.ValidateApiKey(
        vpb.ValidateApiKeyRequest(
            secret=check["secret"], deployment=LLAMA, client_address="10.0.0.7"
        )
    )
    assert limited.verdict == vpb.VERDICT_RATE_LIMITED


def test_http_calls_are_counted_in_the_same_metrics(serving: Callable[..., RunningServer]) -> None:
    server = serving(metrics_address="127.0.0.1:0", **ON)
    status, created = create(base(server))
    assert status == 200
    for _ in range(4):
        assert call(base(server), "GET", f"/v1/{created['apiKey']['name']}")[0] == 200
    call(base(server), "POST", f"/v1/{LLAMA}:validateApiKey", {"secret": created["secret"]})
    call(base(server), "GET", "/v1/projects/acme/apiKeys/not-there")
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics") as page:
        samples = parsed(page.read().decode())
    assert value(samples, "edgekeys_rpc_duration_seconds_count", method="GetApiKey") == 5
    assert value(samples, "edgekeys_validations_total", verdict="VERDICT_ALLOWED") == 1
    assert value(samples, "edgekeys_rpc_errors_total", method="GetApiKey", code="NOT_FOUND") == 1


def test_access_lines_leave_out_answered_validations_and_health_probes(
    serving: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    """As over gRPC, the gateways' calls are counted, not logged one by one (the
    probes neither), unless they fail; every other request is one line at INFO."""
    server = serving(**ON)
    status, created = create(base(server))
    assert status == 200
    caplog.set_level(logging.INFO, logger="edgekeys.http")
    validate = f"/v1/{LLAMA}:validateApiKey"
    assert call(base(server), "POST", validate, {"secret": created["secret"]})[0] == 200
    batch = {"requests": [{"secret": created["secret"], "deployment": LLAMA}]}
    assert call(base(server), "POST", "/v1/apiKeys:batchValidate", batch)[0] == 200
    assert call(base(server), "GET", "/healthz")[0] == 200
    assert call(base(server), "GET", f"/v1/{created['apiKey']['name']}")[0] == 200
    bad = "/v1/projects/acme/deployments/NOT_A_NAME:validateApiKey"
    assert call(base(server), "POST", bad, {"secret": created["secret"]})[0] == 400

    def logged() -> list[tuple[str, str, int]]:
        return [
            (r.fields["method"], r.fields["path"], r.fields["status"])  # type: ignore[attr-defined]
            for r in caplog.records
            if r.name == "edgekeys.http"
        ]

    # A line is written just after its reply is sent: wait for the last two.
    deadline = time.monotonic() + 10
    while len(logged()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert logged() == [
        ("GET", f"/v1/{created['apiKey']['name']}", 200),
        ("POST", bad, 400),
    ]


def test_watch_events_streams_one_json_line_per_event(
    serving: Callable[..., RunningServer],
) -> None:
    server = serving(**ON)
    create(base(server))
    lines: list[dict[str, Any]] = []
    request = urllib.request.Request(base(server) + "/v1/projects/acme/events:watch")

    def watch() -> None:
        with urllib.request.urlopen(request, timeout=30) as stream:
            assert stream.headers["content-type"] == "application/x-ndjson"
            for line in stream:
                lines.append(json.loads(line))
                if len(lines) == 2:
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deadline = time.monotonic() + 10
    while not lines:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    create(base(server))  # a change after the stream caught up arrives live
    watcher.join(10)
    assert [line["event"]["position"] for line in lines] == ["1", "2"]
    assert all(line["event"]["eventType"] == "KeyCreated" for line in lines)


def test_https_uses_the_grpc_certificate_and_its_client_certificates(
    tmp_path: Path, authority: Authority, serving: Callable[..., RunningServer]
) -> None:
    table = callers.caller_table("portal-backend", None, ["admin", "auditor"], ["acme"], SUBJECT)
    server = serving(
        **tls_options(
            authority, tls_client_ca=str(authority.cert), callers_file=callers_file(tmp_path, table)
        ),
        **ON,
    )

    def client(issued: Issued | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(authority.cert))
        if issued is not None:
            context.load_cert_chain(str(issued.cert), str(issued.key))
        return context

    url = base(server, "https")
    portal = client(authority.client("portal-backend", "Acme"))
    status, created = call(
        url, "POST", "/v1/projects/acme/apiKeys", {"displayName": "k"}, context=portal
    )
    assert status == 200
    status, history = call(url, "GET", f"/v1/{created['apiKey']['name']}/events", context=portal)
    assert [event["actor"] for event in history["events"]] == ["portal-backend"]
    status, body = call(
        url, "GET", "/v1/projects/acme/apiKeys", context=client(authority.client("stranger"))
    )
    assert (status, reason(body)) == (401, "CALLER_UNAUTHENTICATED")
    with pytest.raises(OSError):  # no client certificate: no handshake (or no reply)
        call(url, "GET", "/v1/projects/acme/apiKeys", context=client(None))
    with pytest.raises(OSError):  # and no plain HTTP on that port
        call(base(server), "GET", "/healthz")


def test_off_serves_no_http(running: RunningServer) -> None:
    assert running.server.http_port is None
    assert running.server.http is None
    assert running.channel is not None
    grpc.channel_ready_future(running.channel).result(10)  # gRPC alone


def test_a_boolean_query_parameter_reads_as_envoys_transcoder_reads_it(
    serving: Callable[..., RunningServer],
) -> None:
    server = serving(**ON)
    status, created = create(base(server))
    name = created["apiKey"]["name"]
    assert call(base(server), "DELETE", f"/v1/{name}")[0] == 200

    def shown(value: str) -> bool:
        status, listed = call(base(server), "GET", f"/v1/projects/acme/apiKeys?showDeleted={value}")
        assert status == 200, listed
        return name in [key["name"] for key in listed.get("apiKeys", [])]

    assert [shown(v) for v in ("true", "True", "YES", "y", "t", "1")] == [True] * 6
    assert [shown(v) for v in ("false", "FALSE", "No", "n", "f", "0")] == [False] * 6
    status, body = call(base(server), "GET", "/v1/projects/acme/apiKeys?showDeleted=on")
    assert (status, body["error"]["details"][1]["fieldViolations"][0]["field"]) == (
        400,
        "show_deleted",
    )
