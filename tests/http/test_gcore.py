"""Gcore's v3 API-key routes, driven by Gcore's own SDK (PyPI `gcore`, unchanged) against
a real server on a loopback port: what a Gcore customer's code does works on edgekeys,
through the same methods (and so the same rules, callers and history) as gRPC."""

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gcore
import httpx
import pytest
from aiohttp import web
from gcore import Gcore

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from edgekeys.v1 import audit_pb2_grpc
from edgekeys.v1 import validation_pb2 as vpb
from service.http import gcore as adapter
from service.http.context import HttpContext
from service.security import callers
from tests.api.test_callers import write_callers
from tests.conftest import FakeClock, RunningServer

PROJECT = 4242
PARENT = f"projects/{PROJECT}"
LLAMA = f"{PARENT}/deployments/llama-3"
SECRET = re.compile(r"edk_[0-9A-Za-z]{49}")
ID_RULE = "^[a-z][a-z0-9-]{2,61}[a-z0-9]$"


class Sdk:
    """Gcore's client aimed at a server, recording the requests it sends."""

    def __init__(self, server: RunningServer, token: str = "unused", **options: Any) -> None:
        self.sent: list[httpx.Request] = []
        self.base_url = f"http://127.0.0.1:{server.server.http_port}"
        self.client = Gcore(
            api_key=token,
            base_url=self.base_url,
            cloud_project_id=options.pop("project", PROJECT),
            http_client=httpx.Client(event_hooks={"request": [self.sent.append]}),
            **options,
        )
        self.keys = self.client.cloud.inference.api_keys


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[RunningServer]:
    running = RunningServer(
        tmp_path / "edgekeys.db", clock, options={"http_address": "127.0.0.1:0"}
    )
    yield running.start()
    running.stop()


@pytest.fixture
def sdk(server: RunningServer) -> Sdk:
    return Sdk(server, max_retries=0)


def body_of(error: gcore.APIStatusError) -> dict[str, Any]:
    """The JSON body of the refusal the SDK raised."""
    assert isinstance(error.body, dict)
    return error.body


def grpc_key(server: RunningServer, key_id: str, project: str = PARENT) -> pb.ApiKey:
    reply = server.keys.GetApiKey(pb.GetApiKeyRequest(name=f"{project}/apiKeys/{key_id}"))
    key: pb.ApiKey = reply.api_key
    return key


def attach(server: RunningServer, key_id: str, deployment: str = LLAMA) -> None:
    name = f"{PARENT}/apiKeys/{key_id}"
    server.keys.AttachDeployment(pb.AttachDeploymentRequest(name=name, deployment=deployment))


# --- the SDK's five calls ---------------------------------------------------------------


def test_create_shows_the_secret_once_and_the_key_is_ours_too(
    sdk: Sdk, server: RunningServer
) -> None:
    created = sdk.keys.create(name="portal-prod", description="portal", expires_at="2031-01-31")

    assert SECRET.fullmatch(created.secret)
    assert created.model_dump() == {
        "name": "portal-prod",
        "description": "portal",
        "expires_at": "2031-01-31T00:00:00Z",  # a bare date: 00:00 UTC that day
        "deployment_names": [],
        "created_at": "2030-01-01T00:00:00Z",
        "secret": created.secret,
    }
    ours = grpc_key(server, "portal-prod")  # the Gcore name is the key's ID and display name
    assert (ours.display_name, ours.description) == ("portal-prod", "portal")
    assert ours.expire_time.ToDatetime(tzinfo=UTC) == datetime(2031, 1, 31, tzinfo=UTC)
    shown = sdk.keys.get("portal-prod")
    assert "secret" not in shown.model_dump() and not shown.model_extra


def test_create_reads_expires_at_in_every_iso_form_the_sdk_may_send(sdk: Sdk) -> None:
    forms = {
        "2031-01-01T12:00:00Z": "2031-01-01T12:00:00Z",
        "2031-01-01T12:00:00+02:00": "2031-01-01T10:00:00Z",
        "2031-01-01T12:00:00": "2031-01-01T12:00:00Z",  # no offset: UTC
        "2031-01-01T12:00:00.250000Z": "2031-01-01T12:00:00.250Z",
    }
    for n, (sent, shown) in enumerate(forms.items()):
        assert sdk.keys.create(name=f"form-{n}", expires_at=sent).expires_at == shown
    # a datetime goes out as isoformat(), "+00:00" rather than "Z"
    when = datetime(2031, 6, 1, tzinfo=UTC)
    assert sdk.keys.create(name="as-datetime", expires_at=when).expires_at == "2031-06-01T00:00:00Z"  # type: ignore[arg-type]
    never = sdk.keys.create(name="no-expiry")
    assert (never.expires_at, never.description) == (None, None)


def test_get_shows_every_field_and_the_deployments_by_id(sdk: Sdk, server: RunningServer) -> None:
    sdk.keys.create(name="attached", description="d")
    attach(server, "attached")
    attach(server, "attached", f"{PARENT}/deployments/mistral")

    assert sdk.keys.get("attached").model_dump() == {
        "name": "attached",
        "description": "d",
        "expires_at": None,
        "deployment_names": ["llama-3", "mistral"],
        "created_at": "2030-01-01T00:00:00Z",
    }


def test_update_changes_the_description_clears_it_with_none_and_does_nothing_with_no_field(
    sdk: Sdk, server: RunningServer
) -> None:
    sdk.keys.create(name="described", description="old")
    assert sdk.keys.update("described", description="new").description == "new"
    assert sdk.keys.get("described").description == "new"
    version = len(events(server, "described"))

    assert sdk.keys.update("described").description == "new"  # `{}`: nothing written
    assert len(events(server, "described")) == version
    assert sdk.keys.update("described", description=None).description is None
    assert grpc_key(server, "described").description == ""


def test_delete_answers_204_and_the_key_is_gone_for_gcore_but_its_history_stays(
    sdk: Sdk, server: RunningServer
) -> None:
    sdk.keys.create(name="short-lived")
    raw = sdk.keys.with_raw_response.delete("short-lived")
    assert (raw.status_code, raw.parse()) == (204, None)

    for call in (
        lambda: sdk.keys.get("short-lived"),
        lambda: sdk.keys.update("short-lived", description="x"),
        lambda: sdk.keys.delete("short-lived"),
    ):
        with pytest.raises(gcore.NotFoundError) as gone:
            call()
        assert gone.value.body == {
            "message": f"{PARENT}/apiKeys/short-lived does not exist",
            "reason": "API_KEY_NOT_FOUND",
        }
    assert [k.name for k in sdk.keys.list()] == []
    assert grpc_key(server, "short-lived").state == pb.ApiKey.STATE_DELETED
    assert [e.event_type for e in events(server, "short-lived")] == ["KeyCreated", "KeyDeleted"]


def events(server: RunningServer, key_id: str) -> list[apb.AuditEvent]:
    audit = audit_pb2_grpc.AuditServiceStub(server.channel)
    request = apb.ListApiKeyEventsRequest(name=f"{PARENT}/apiKeys/{key_id}")
    return list(audit.ListApiKeyEvents(request).events)


def test_list_auto_pages_over_every_key_with_count_the_total(
    sdk: Sdk, server: RunningServer
) -> None:
    names = [f"key-{n:03d}" for n in range(250)]
    for start in range(0, len(names), 50):  # through gRPC, concurrently: it is quicker
        calls = [
            server.keys.CreateApiKey.future(
                pb.CreateApiKeyRequest(
                    parent=PARENT, api_key_id=key_id, api_key=pb.ApiKey(display_name=key_id)
                )
            )
            for key_id in names[start : start + 50]
        ]
        for call in calls:
            call.result()
    server.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=f"{PARENT}/apiKeys/{names.pop()}"))
    server.create(parent="projects/4343", deployments=())  # another project's key

    first = sdk.keys.list()  # no limit: Gcore's default of 100
    assert (first.count, len(first.results)) == (249, 100)
    assert sorted(k.name for k in sdk.keys.list()) == names
    assert [request.url.query for request in sdk.sent[1:]] == [b"", b"offset=100", b"offset=200"]
    sdk.sent.clear()
    # oldest first, as our ListApiKeys orders them (made concurrently: not in name order)
    listed = server.keys.ListApiKeys(pb.ListApiKeysRequest(parent=PARENT, page_size=1000))
    oldest_first = [key.name.rsplit("/", 1)[1] for key in listed.api_keys]
    assert sorted(oldest_first) == names
    assert [k.name for k in sdk.keys.list(limit=120, offset=10)] == oldest_first[10:]
    assert [r.url.params.get("offset") for r in sdk.sent] == ["10", "130"]
    assert sdk.keys.list(limit=5000).count == 249  # at most 1000 a page, as Gcore's
    assert len(sdk.keys.list(limit=5000).results) == 249


def test_the_async_client_auto_pages_too(server: RunningServer) -> None:
    for n in range(3):
        server.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=PARENT, api_key_id=f"async-{n}", api_key=pb.ApiKey(display_name="a")
            )
        )

    async def walk() -> list[str]:
        client = gcore.AsyncGcore(
            api_key="unused",
            base_url=f"http://127.0.0.1:{server.server.http_port}",
            cloud_project_id=PROJECT,
            max_retries=0,
        )
        async with client:
            return [k.name async for k in client.cloud.inference.api_keys.list(limit=2)]

    # On a thread of its own: the browser tests' Playwright may hold this thread's loop.
    with ThreadPoolExecutor(1) as thread:
        assert thread.submit(asyncio.run, walk()).result(60) == ["async-0", "async-1", "async-2"]


# --- Gcore's rules and refusals ---------------------------------------------------------


def test_deleting_an_attached_key_is_a_conflict_the_sdk_does_not_retry(
    server: RunningServer,
) -> None:
    sdk = Sdk(server)  # the SDK's default retries: 409 is retried unless told not to
    sdk.keys.create(name="in-use")
    attach(server, "in-use")
    sdk.sent.clear()

    with pytest.raises(gcore.ConflictError) as conflict:
        sdk.keys.delete("in-use")

    assert conflict.value.body == {
        "message": "the API key is attached to deployments (llama-3); detach it first",
        "reason": "API_KEY_ATTACHED",
    }
    assert conflict.value.response.headers["x-should-retry"] == "false"
    assert len(sdk.sent) == 1
    assert grpc_key(server, "in-use").state == pb.ApiKey.STATE_ACTIVE
    server.keys.DetachDeployment(
        pb.DetachDeploymentRequest(name=f"{PARENT}/apiKeys/in-use", deployment=LLAMA)
    )
    sdk.keys.delete("in-use")
    assert grpc_key(server, "in-use").state == pb.ApiKey.STATE_DELETED


def test_a_key_attached_between_the_check_and_the_delete_is_not_deleted(
    sdk: Sdk, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk.keys.create(name="raced")
    checked = adapter._Routes._live_key
    attach_method = server.server.calls.methods["/edgekeys.v1.ApiKeyService/AttachDeployment"]

    async def check_then_attach(routes: Any, request: Any) -> pb.ApiKey:
        key = await checked(routes, request)  # no deployment yet: the check passes
        attach_request = pb.AttachDeploymentRequest(name=key.name, deployment=LLAMA)
        await attach_method.unary(attach_request, HttpContext(request))  # someone else, meanwhile
        return key

    monkeypatch.setattr(adapter._Routes, "_live_key", check_then_attach)
    with pytest.raises(gcore.ConflictError) as conflict:
        sdk.keys.delete("raced")

    assert body_of(conflict.value)["reason"] == "ETAG_MISMATCH"
    assert "x-should-retry" not in conflict.value.response.headers  # a retry checks again
    key = grpc_key(server, "raced")
    assert (key.state, list(key.deployments)) == (pb.ApiKey.STATE_ACTIVE, [LLAMA])


def test_a_name_taken_is_a_conflict_the_sdk_does_not_retry(server: RunningServer) -> None:
    sdk = Sdk(server)
    sdk.keys.create(name="taken")
    sdk.sent.clear()
    with pytest.raises(gcore.ConflictError) as conflict:
        sdk.keys.create(name="taken")
    assert body_of(conflict.value)["reason"] == "API_KEY_ALREADY_EXISTS"
    assert len(sdk.sent) == 1


@pytest.mark.parametrize("name", ["Portal", "abc", "a.b.c", "-abc", "abc-", "a" * 64, "naïve"])
def test_a_name_our_id_rule_cannot_hold_is_refused_with_the_rule(sdk: Sdk, name: str) -> None:
    with pytest.raises(gcore.BadRequestError) as refused:
        sdk.keys.create(name=name)
    assert refused.value.body == {
        "message": f"name: must match {ID_RULE}",
        "reason": "INVALID_ARGUMENT",
    }


def test_keys_of_another_project_are_not_found(sdk: Sdk, server: RunningServer) -> None:
    sdk.keys.create(name="ours")
    elsewhere = Sdk(server, project=4343, max_retries=0)
    with pytest.raises(gcore.NotFoundError):
        elsewhere.keys.get("ours")
    with pytest.raises(gcore.NotFoundError):
        elsewhere.keys.update("ours", description="theirs now")
    with pytest.raises(gcore.NotFoundError):
        elsewhere.keys.delete("ours")
    assert list(elsewhere.keys.list()) == []
    assert sdk.keys.get("ours").description is None


def test_the_secret_it_returned_passes_validation_once_attached(
    sdk: Sdk, server: RunningServer
) -> None:
    created = sdk.keys.create(name="validated")

    def verdict() -> int:
        request = vpb.ValidateApiKeyRequest(secret=created.secret, deployment=LLAMA)
        reply = server.validation.ValidateApiKey(request)
        return int(reply.verdict)

    assert verdict() == vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED
    attach(server, "validated")
    assert verdict() == vpb.VERDICT_ALLOWED
    sdk.keys.update("validated", description="still the same secret")
    assert verdict() == vpb.VERDICT_ALLOWED


def test_the_readmes_example_runs_as_it_stands(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Using Gcore's SDK\n")[1].split("\n## ")[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC))  # before the example's expiry
    running = RunningServer(
        tmp_path / "edgekeys.db", clock, options={"http_address": "127.0.0.1:0"}
    )
    try:
        url = f"http://127.0.0.1:{running.start().server.http_port}"
        printed: list[str] = []
        example = code.replace("http://127.0.0.1:8080", url)
        exec(example, {"print": lambda *args: printed.append(" ".join(map(str, args)))})
    finally:
        running.stop()
    assert SECRET.fullmatch(printed[0])
    assert printed[1:] == ["portal-prod [] 2027-01-31T00:00:00Z"]


# --- callers ----------------------------------------------------------------------------


@pytest.fixture
def guarded(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    callers_file = tmp_path / "callers.toml"
    cast = {"portal": (["admin"], [str(PROJECT)]), "auditor": (["auditor"], ["*"])}
    tokens = write_callers(callers_file, cast)
    running = RunningServer(
        tmp_path / "edgekeys.db",
        clock,
        options={"http_address": "127.0.0.1:0", "callers_file": str(callers_file)},
    )
    yield running.start(), tokens
    running.stop()


def test_the_callers_gate_admits_the_sdks_token_and_records_its_caller(
    guarded: tuple[RunningServer, dict[str, str]],
) -> None:
    server, tokens = guarded
    portal = Sdk(server, tokens["portal"], max_retries=0)
    portal.keys.create(name="gated")
    portal.keys.update("gated", description="by the portal")

    auditor = [("authorization", f"Bearer {tokens['auditor']}")]
    audit = audit_pb2_grpc.AuditServiceStub(server.channel)
    history = audit.ListApiKeyEvents(
        apb.ListApiKeyEventsRequest(name=f"{PARENT}/apiKeys/gated"), metadata=auditor
    )
    assert [e.actor for e in history.events] == ["portal", "portal"]
    assert portal.sent[0].headers["authorization"] == f"APIKey {tokens['portal']}"


def test_a_bad_token_is_401_and_another_project_403(
    guarded: tuple[RunningServer, dict[str, str]],
) -> None:
    server, tokens = guarded
    for token in (callers.new_token()[0], tokens["auditor"] + "x"):
        with pytest.raises(gcore.AuthenticationError) as refused:
            Sdk(server, token, max_retries=0).keys.list()
        assert body_of(refused.value)["reason"] == "CALLER_UNAUTHENTICATED"
    with pytest.raises(gcore.PermissionDeniedError) as role:
        Sdk(server, tokens["auditor"], max_retries=0).keys.list()  # not an admin
    assert body_of(role.value)["reason"] == "ROLE_NOT_ALLOWED"
    with pytest.raises(gcore.PermissionDeniedError) as project:
        Sdk(server, tokens["portal"], project=4343, max_retries=0).keys.create(name="elsewhere")
    assert body_of(project.value)["reason"] == "PROJECT_NOT_ALLOWED"


def test_too_many_bad_tokens_are_429_and_the_sdk_does_not_retry(
    tmp_path: Path, clock: FakeClock
) -> None:
    callers_file = tmp_path / "callers.toml"
    write_callers(callers_file, {"portal": (["admin"], ["*"])})
    options = {"http_address": "127.0.0.1:0", "callers_file": str(callers_file)}
    running = RunningServer(
        tmp_path / "edgekeys.db", clock, options=options | {"failed_auth_burst": 2}
    )
    guessing = Sdk(running.start(), callers.new_token()[0])  # the SDK's default retries
    try:
        for _ in range(2):
            with pytest.raises(gcore.AuthenticationError):
                guessing.keys.list()
        guessing.sent.clear()
        with pytest.raises(gcore.RateLimitError) as limited:
            guessing.keys.list()
        assert body_of(limited.value)["reason"] == "TOO_MANY_FAILED_AUTHENTICATIONS"
        assert limited.value.response.headers["x-should-retry"] == "false"
        assert len(guessing.sent) == 1
    finally:
        running.stop()


# --- bad input, sent as raw HTTP --------------------------------------------------------

KEYS_PATH = f"/cloud/v3/inference/{PROJECT}/api_keys"
JSON = {"content-type": "application/json"}
BAD_INPUT: list[tuple[str, str, dict[str, Any], int, str]] = [
    # method, path, httpx arguments, status, in the message
    ("POST", KEYS_PATH, {"content": b"{not json", "headers": JSON}, 400, "not valid JSON"),
    ("POST", KEYS_PATH, {"content": b"[1]", "headers": JSON}, 400, "a JSON object"),
    (
        "POST",
        KEYS_PATH,
        {"json": {"name": "fine", "deployments": []}},
        400,
        "deployments: is not a field",
    ),
    ("POST", KEYS_PATH, {"json": {"name": 5}}, 400, "name: must be a string"),
    ("POST", KEYS_PATH, {"json": {"name": None}}, 400, "name: must be a string"),
    ("POST", KEYS_PATH, {"json": {}}, 400, "name: is required"),
    ("POST", KEYS_PATH, {"json": {"name": ""}}, 400, "name: is required"),
    (
        "POST",
        KEYS_PATH,
        {"json": {"name": "fine", "description": ["x"]}},
        400,
        "description: must be",
    ),
    (
        "POST",
        KEYS_PATH,
        {"json": {"name": "fine", "description": "x" * 301}},
        400,
        "description: must be at most 300",
    ),
    (
        "POST",
        KEYS_PATH,
        {"json": {"name": "fine", "expires_at": 1700000000}},
        400,
        "expires_at: must be",
    ),
    (
        "POST",
        KEYS_PATH,
        {"json": {"name": "fine", "expires_at": "not-a-date"}},
        400,
        "expires_at: expected an ISO 8601",
    ),
    (
        "POST",
        KEYS_PATH,
        {"json": {"name": "fine", "expires_at": "2001-01-01"}},
        400,
        "expires_at: ",
    ),
    (
        "POST",
        KEYS_PATH,
        {"json": {"name": "fine", "expires_at": "9999-12-31T23:00:00-05:00"}},
        400,
        "expires_at: ",
    ),
    (
        "POST",
        KEYS_PATH,
        {"content": b'{"name": "fine"}', "headers": {"content-type": "text/plain"}},
        415,
        "application/json",
    ),
    ("POST", KEYS_PATH, {"content": b" " * (1024 * 1024 + 1), "headers": JSON}, 413, "1 MiB"),
    (
        "POST",
        KEYS_PATH,
        {"content": iter([b" " * 65536] * 17), "headers": JSON},
        413,
        "1 MiB",
    ),  # chunked
    (
        "POST",
        KEYS_PATH + "?name=fine",
        {"json": {"name": "fine"}},
        400,
        "name: is not a query parameter",
    ),
    ("PATCH", KEYS_PATH + "/some-key", {"json": {"name": "renamed"}}, 400, "name: is not a field"),
    ("PATCH", KEYS_PATH + "/some-key", {"json": {"description": 1}}, 400, "description: must be"),
    ("PATCH", KEYS_PATH + "/some-key", {"content": b"{", "headers": JSON}, 400, "not valid JSON"),
    ("GET", KEYS_PATH + "?limit=ten", {}, 400, "limit: must be an integer"),
    ("GET", KEYS_PATH + "?limit=1.5", {}, 400, "limit: must be an integer"),
    ("GET", KEYS_PATH + "?limit=0", {}, 400, "limit: must be at least 1"),
    ("GET", KEYS_PATH + "?offset=-1", {}, 400, "offset: must not be negative"),
    ("GET", KEYS_PATH + "?offset=" + "9" * 40, {}, 400, "offset: must be an integer"),
    ("GET", KEYS_PATH + "?offset=1&offset=2", {}, 400, "offset: is given more than once"),
    ("GET", KEYS_PATH + "?page_size=3", {}, 400, "page_size: is not a query parameter"),
    ("GET", KEYS_PATH + "/Not-An-Id", {}, 400, ID_RULE),
    ("GET", KEYS_PATH + "/a%2Fb", {}, 400, ID_RULE),
    ("GET", KEYS_PATH + "/some-key", {}, 404, "does not exist"),
    ("PUT", KEYS_PATH + "/some-key", {"json": {}}, 405, "allowed: GET, PATCH, DELETE"),
    ("DELETE", KEYS_PATH, {}, 405, "allowed: GET, POST"),
    ("GET", "/cloud/v3/inference/0/api_keys", {}, 400, "project_id: "),
    ("GET", "/cloud/v3/inference/9223372036854775808/api_keys", {}, 400, "project_id: "),
    ("GET", "/cloud/v3/inference/acme/api_keys", {}, 404, "no such route"),
    ("GET", "/cloud/v3/inference/4242/deployments", {}, 404, "no such route"),
]


@pytest.mark.parametrize(("method", "path", "sent", "status", "said"), BAD_INPUT)
def test_bad_input_is_a_4xx_with_a_json_message(
    server: RunningServer, method: str, path: str, sent: dict[str, Any], status: int, said: str
) -> None:
    url = f"http://127.0.0.1:{server.server.http_port}{path}"
    reply = httpx.request(method, url, timeout=30, **sent)

    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert said in reply.json()["message"]
    assert set(reply.json()) == {"message", "reason"}


def test_no_gcore_route_answers_for_a_server_without_api_key_service(server: RunningServer) -> None:
    app = adapter.with_gcore_routes(web.Application(), {})  # an edge follower's methods
    assert list(app.router.resources()) == []
