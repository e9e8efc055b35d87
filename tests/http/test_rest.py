"""REST/JSON from the protos, through the real listener: every unary RPC of the three
public services by its `google.api.http` rule, answering the proto JSON of the very gRPC
response; query parameters by proto and JSON name in their proto JSON form; gRPC codes
as HTTP statuses in Google's error shape; and bad HTTP input as a 4xx naming the field."""

import http.client
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import json_format

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from service.api.errors import DOMAIN
from tests.conftest import FakeClock, RunningServer
from tests.http.test_listener import LLAMA, ON, base, call, reason

MISTRAL = "projects/acme/deployments/mistral"
KEY = "projects/acme/apiKeys/tour"
CREATE = "/v1/projects/acme/apiKeys"
JSON = {"content-type": "application/json"}


@pytest.fixture
def server(serving: Callable[..., RunningServer]) -> RunningServer:
    return serving(**ON)


def raw(
    server: RunningServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A request as bytes on the wire: its status, headers and JSON body."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        reply = connection.getresponse()
        data = reply.read()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, json.loads(data)
    finally:
        connection.close()


def grpc_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def test_every_unary_rpc_answers_over_http_as_over_grpc(
    server: RunningServer, clock: FakeClock
) -> None:
    url = base(server)
    # Create: the id as a query parameter by its proto name, the body the ApiKey.
    status, created = call(
        url,
        "POST",
        "/v1/projects/acme/apiKeys?api_key_id=tour",
        {"displayName": "tour", "description": "first", "deployments": [LLAMA]},
    )
    assert status == 200 and created["apiKey"]["name"] == KEY and created["secret"]
    got = server.keys.GetApiKey(pb.GetApiKeyRequest(name=KEY))
    assert created["apiKey"] == grpc_json(got.api_key)
    clock.advance(seconds=1)
    # ... and by its JSON name.
    status, other = call(url, "POST", f"{CREATE}?apiKeyId=other", {"displayName": "o"})
    assert (status, other["apiKey"]["name"]) == (200, "projects/acme/apiKeys/other")

    status, body = call(url, "GET", f"/v1/{KEY}")
    assert (status, body) == (200, grpc_json(server.keys.GetApiKey(pb.GetApiKeyRequest(name=KEY))))

    status, page = call(url, "GET", "/v1/projects/acme/apiKeys?pageSize=1&order_by=create_time")
    assert status == 200, page
    assert page == grpc_json(
        server.keys.ListApiKeys(
            pb.ListApiKeysRequest(parent="projects/acme", page_size=1, order_by="create_time")
        )
    )
    assert len(page["apiKeys"]) == 1 and page["nextPageToken"]
    status, filtered = call(url, "GET", f"/v1/projects/acme/apiKeys?deployment={LLAMA}")
    assert [key["name"] for key in filtered["apiKeys"]] == [KEY]

    # PATCH with the mask in its proto JSON form, and the etag in the body.
    status, updated = call(
        url,
        "PATCH",
        f"/v1/{KEY}?updateMask=displayName,description",
        {"displayName": "renamed", "description": "", "etag": body["apiKey"]["etag"]},
    )
    assert status == 200, updated
    assert updated["apiKey"]["displayName"] == "renamed"
    assert "description" not in updated["apiKey"]  # cleared, as the mask says

    status, attached = call(url, "POST", f"/v1/{KEY}:attachDeployment", {"deployment": MISTRAL})
    assert (status, attached["apiKey"]["deployments"]) == (200, [LLAMA, MISTRAL])
    status, detached = call(url, "POST", f"/v1/{KEY}:detachDeployment", {"deployment": LLAMA})
    assert (status, detached["apiKey"]["deployments"]) == (200, [MISTRAL])

    status, rotated = call(url, "POST", f"/v1/{KEY}:rotate", {"gracePeriod": "3600s"})
    assert status == 200 and rotated["secret"] != created["secret"]
    assert rotated["apiKey"]["previousSecretExpireTime"]

    secret = rotated["secret"]
    status, verdict = call(url, "POST", f"/v1/{MISTRAL}:validateApiKey", {"secret": secret})
    assert (status, verdict["verdict"], verdict["apiKey"]) == (200, "VERDICT_ALLOWED", KEY)
    status, batch = call(
        url,
        "POST",
        "/v1/apiKeys:batchValidate",
        {"requests": [{"secret": secret, "deployment": m} for m in (MISTRAL, LLAMA)]},
    )
    assert [r["verdict"] for r in batch["responses"]] == [
        "VERDICT_ALLOWED",
        "VERDICT_DEPLOYMENT_NOT_ALLOWED",
    ]
    status, found = call(url, "POST", "/v1/apiKeys:lookup", {"secret": created["secret"]})
    assert (status, found["apiKey"]["name"]) == (200, KEY)  # the old secret, in its grace

    status, history = call(url, "GET", f"/v1/{KEY}/events?page_size=50")
    assert status == 200, page
    assert history == grpc_json(
        audit_pb2_grpc.AuditServiceStub(server.channel).ListApiKeyEvents(
            apb.ListApiKeyEventsRequest(name=KEY, page_size=50)
        )
    )
    assert [e["eventType"] for e in history["events"]] == [
        "KeyCreated",
        "DetailsChanged",
        "DeploymentAttached",
        "DeploymentDetached",
        "SecretRotated",
    ]
    status, first = call(url, "GET", f"/v1/{KEY}:revision?version=1")
    assert (status, first["apiKey"]["displayName"]) == (200, "tour")
    as_of = history["events"][0]["occurTime"]
    status, then = call(url, "GET", f"/v1/{KEY}:revision?asOfTime={as_of}")
    assert then["apiKey"]["deployments"] == [LLAMA]

    status, events = call(url, "GET", "/v1/projects/acme/events?eventTypes=KeyCreated")
    assert [e["apiKey"] for e in events["events"]] == [KEY, "projects/acme/apiKeys/other"]
    status, checked = call(url, "POST", "/v1/auditLog:verify", {"parent": "projects/acme"})
    assert (status, checked["ok"], checked["eventsChecked"]) == (200, True, "6")

    status, deleted = call(url, "DELETE", f"/v1/{KEY}")
    assert (status, deleted["apiKey"]["state"]) == (200, "STATE_DELETED")
    status, purged = call(url, "POST", f"/v1/{KEY}:purge", {})
    assert status == 200 and "displayName" not in purged["apiKey"]
    status, shown = call(url, "GET", "/v1/projects/acme/apiKeys?showDeleted=true")
    assert sorted(k["name"] for k in shown["apiKeys"]) == ["projects/acme/apiKeys/other", KEY]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/v1/projects/acme/apiKeys/missing", None, 404, "NOT_FOUND"),
        ("GET", "/v1/projects/Acme!/apiKeys/x", None, 400, "INVALID_ARGUMENT"),
        ("POST", f"{CREATE}?apiKeyId=taken", {"displayName": "t"}, 409, "ALREADY_EXISTS"),
        ("DELETE", "/v1/projects/acme/apiKeys/taken?etag=stale", None, 409, "ABORTED"),
        ("POST", "/v1/projects/acme/apiKeys/taken:purge", {}, 400, "FAILED_PRECONDITION"),
        ("GET", "/v1/projects/acme/apiKeys/taken:revision", None, 400, "INVALID_ARGUMENT"),
    ],
)
def test_grpc_codes_become_http_statuses_in_googles_error_shape(
    server: RunningServer,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    code: str,
) -> None:
    server.keys.CreateApiKey(
        pb.CreateApiKeyRequest(
            parent="projects/acme", api_key_id="taken", api_key=pb.ApiKey(display_name="t")
        )
    )
    got, error = call(base(server), method, path, body)
    assert got == status, error
    assert set(error) == {"error"}
    assert (error["error"]["code"], error["error"]["status"]) == (status, code)
    assert error["error"]["message"]
    infos = [d for d in error["error"]["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert infos and infos[0]["domain"] == DOMAIN


def test_unauthenticated_denied_and_exhausted_callers(
    guarded: tuple[RunningServer, dict[str, str]],
) -> None:
    server, tokens = guarded
    url = base(server)
    assert call(url, "GET", CREATE)[0] == 401
    assert call(url, "GET", CREATE, None, f"Bearer {tokens['edge']}")[0] == 403
    assert call(url, "GET", CREATE, None, f"Bearer {tokens['portal']}")[0] == 200
    statuses = [call(url, "GET", CREATE, None, "Bearer ekc_wrong")[0] for _ in range(120)]
    assert statuses[0] == 401 and statuses[-1] == 429
    _, body = call(url, "GET", CREATE, None, "Bearer ekc_wrong")
    assert (body["error"]["status"], reason(body)) == (
        "RESOURCE_EXHAUSTED",
        "TOO_MANY_FAILED_AUTHENTICATIONS",
    )


def test_the_store_cut_off_is_503(server: RunningServer) -> None:
    with server.store_cut_off():
        status, body = call(base(server), "POST", "/v1/projects/acme/apiKeys", {})
    assert (status, body["error"]["status"]) == (503, "UNAVAILABLE")


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "field"),
    [
        ("POST", CREATE, b"{not json", JSON, 400, None),
        ("POST", CREATE, b"[1, 2]", JSON, 400, None),
        ("POST", CREATE, b'{"displayName": "a", "colour": "red"}', JSON, 400, "api_key.colour"),
        ("POST", CREATE, b'{"displayName": 7}', JSON, 400, "api_key.displayName"),
        ("POST", CREATE, b'{"deployments": "one"}', JSON, 400, "api_key.deployments"),
        ("POST", CREATE, b'{"expireTime": "tomorrow"}', JSON, 400, "api_key.expireTime"),
        ("POST", CREATE + "?apiKeyID=x", b"{}", JSON, 400, "apiKeyID"),
        ("POST", CREATE + "?api_key_id=a&apiKeyId=b", b"{}", JSON, 400, "api_key_id"),
        ("POST", CREATE + "?api_key.display_name=x", b"{}", JSON, 400, "api_key.display_name"),
        ("GET", CREATE + "?showDeleted=maybe", None, {}, 400, "show_deleted"),
        ("GET", CREATE + "?pageSize=many", None, {}, 400, "pageSize"),
        ("GET", CREATE + "?parent=projects/other", None, {}, 400, "parent"),
        ("POST", f"/v1/{LLAMA}:validateApiKey?secret=edk_x", b"{}", JSON, 400, "secret"),
        ("POST", CREATE, b"{}", {"content-type": "text/plain"}, 415, None),
        ("POST", CREATE, b"{}", {"content-type": "application/x-www-form-urlencoded"}, 415, None),
        ("GET", "/v1/projects/acme/nothing", None, {}, 404, None),
        ("GET", "/v2/projects/acme/apiKeys", None, {}, 404, None),
        ("PUT", CREATE, b"{}", JSON, 405, None),
        ("GET", f"/v1/{LLAMA}:validateApiKey", None, {}, 405, None),
    ],
)
def test_bad_http_input_is_a_4xx_naming_the_field(
    server: RunningServer,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    got, reply_headers, error = raw(server, method, path, body, headers)
    assert got == status, error
    assert reply_headers["content-type"].startswith("application/json")
    assert error["error"]["code"] == status and error["error"]["message"]
    violations = [
        violation
        for detail in error["error"]["details"]
        for violation in detail.get("fieldViolations", [])
    ]
    if field is not None:
        assert [v["field"] for v in violations] == [field], error
    if status == 405:
        assert reply_headers["allow"]


def test_a_body_over_1_mib_is_413_with_or_without_a_length(server: RunningServer) -> None:
    big = json.dumps({"description": "x" * (1024 * 1024)}).encode()
    status, _, error = raw(server, "POST", CREATE, big, JSON)
    assert (status, error["error"]["code"]) == (413, 413)

    def chunks() -> Any:  # no Content-Length: chunked transfer encoding
        for at in range(0, len(big), 65536):
            yield big[at : at + 65536]

    connection = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=30)
    connection.request("POST", CREATE, body=chunks(), headers=JSON, encode_chunked=True)
    reply = connection.getresponse()
    assert reply.status == 413 and json.loads(reply.read())["error"]["code"] == 413
    connection.close()
    # and just under the limit is read whole
    fits = json.dumps({"displayName": "fits", "description": "x" * 100}).encode()
    assert raw(server, "POST", CREATE, fits, JSON)[0] == 200


def test_no_secret_reaches_the_http_access_log(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = base(server)
    with caplog.at_level(logging.DEBUG, logger="edgekeys.http"):  # every line
        _, created = call(url, "POST", CREATE, {"displayName": "k", "deployments": [LLAMA]})
        secret = created["secret"]
        call(url, "POST", f"/v1/{LLAMA}:validateApiKey", {"secret": secret})
        call(url, "POST", "/v1/apiKeys:lookup", {"secret": secret})
        call(url, "POST", f"/v1/{LLAMA}:validateApiKey?secret={secret}", {})  # by mistake
        call(url, "GET", f"/v1/projects/acme/apiKeys/{secret}")  # pasted into a path
        deadline = time.monotonic() + 10  # a line is written once its response is sent
        while len(lines := [r for r in caplog.records if r.name == "edgekeys.http"]) < 5:
            assert time.monotonic() < deadline, lines
            time.sleep(0.01)
    for record in lines:
        assert secret not in record.getMessage() + json.dumps(record.__dict__, default=str)
    assert [r.__dict__["fields"]["status"] for r in lines] == [200, 200, 200, 400, 400]
    assert [r.__dict__["fields"]["path"] for r in lines] == [
        CREATE,
        f"/v1/{LLAMA}:validateApiKey",
        "/v1/apiKeys:lookup",
        f"/v1/{LLAMA}:validateApiKey",
        "/v1/projects/acme/apiKeys/(malformed)",
    ]
