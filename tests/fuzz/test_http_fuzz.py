"""The HTTP routes, fuzzed: every REST binding (found from the protos' HTTP rules) and
Gcore's routes, with paths, query parameters, bodies and content types drawn at random
around real names. Never a 5xx, never a traceback: a JSON answer, and every error in the
JSON error shape of its route."""

import http.client
import json
import re
import string
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekeys.v1 import api_keys_pb2 as pb
from service.http.transcoding import bindings
from tests.conftest import FakeClock, RunningServer
from tests.fuzz.conftest import scaled
from tests.fuzz.test_rpc_fuzz import NAMES

FUZZ = scaled(20)
GCORE = ["/cloud/v3/inference/4242/api_keys", "/cloud/v3/inference/4242/api_keys/key-a"]
VERBS = ["GET", "POST", "PATCH", "DELETE", "PUT"]
TYPES = ["application/json", "application/json; charset=utf-8", "text/plain", "", "*/*"]
_VARIABLE = re.compile(r"\{[^}]*\}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    database = Path(tmp_path_factory.mktemp("httpfuzz")) / "edgekeys.db"
    options = {"http_address": "127.0.0.1:0"}
    running = RunningServer(database=database, clock=FakeClock(), options=options).start()
    for parent in ("projects/acme", "projects/4242"):
        running.keys.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent=parent, api_key_id="key-a", api_key=pb.ApiKey(display_name="fuzzed")
            )
        )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def templates(server: RunningServer) -> list[str]:
    """Every binding's path, with `{…}` where a name goes."""
    methods = server.server.calls.methods.values()  # the wrapped methods HTTP serves
    return sorted({_VARIABLE.sub("{}", b.template) for b in bindings(methods)})


text = st.text(alphabet=string.printable + "é\u2028\x00", max_size=40)
names = st.sampled_from(NAMES) | text
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | names,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=12,
)
fields = (
    st.sampled_from(
        [
            "displayName",
            "display_name",
            "deployments",
            "expireTime",
            "secret",
            "deployment",
            "apiKey",
            "api_key",
            "etag",
            "updateMask",
            "pageSize",
            "pageToken",
            "showDeleted",
            "version",
            "asOfTime",
            "gracePeriod",
            "requests",
            "checkpoint",
            "name",
            "description",
            "expires_at",
            "limit",
            "offset",
            "parent",
        ]
    )
    | text
)


def send(server: RunningServer, method: str, path: str, body: bytes | None, kind: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=30)
    headers = {"content-type": kind} if kind else {}
    try:
        connection.request(method, path, body=body, headers=headers)
        reply = connection.getresponse()
        streaming = reply.getheader("content-type") == "application/x-ndjson"
        data = b"" if streaming else reply.read()  # a watch waits for events: let it
    finally:
        connection.close()
    assert reply.status < 500, (method, path, body, reply.status, data[:300])
    if reply.status >= 400 and method != "HEAD":
        error = json.loads(data)
        if path.startswith("/cloud/"):
            assert isinstance(error, dict) and error, (path, error)  # Gcore's shape: a message
        else:
            assert error["error"]["code"] == reply.status, (path, error)
            assert error["error"]["message"], (path, error)


@FUZZ
@given(data=st.data())
def test_any_http_request_gets_a_4xx_or_an_answer_never_a_5xx(
    server: RunningServer, templates: list[str], data: st.DataObject
) -> None:
    template = data.draw(st.sampled_from(templates + GCORE), label="route")
    parts = [quote(data.draw(names, label="name"), safe="/:") for _ in template.split("{}")[1:]]
    path = template.format(*parts)
    query = data.draw(st.dictionaries(fields, names | st.integers().map(str), max_size=3))
    if query:
        path += "?" + "&".join(f"{quote(k)}={quote(str(v))}" for k, v in query.items())
    body: bytes | None = None
    if data.draw(st.booleans(), label="has body"):
        payload = data.draw(
            st.dictionaries(fields, json_values, max_size=5).map(json.dumps).map(str.encode)
            | json_values.map(json.dumps).map(str.encode)
            | st.binary(max_size=200),
            label="body",
        )
        body = payload
    method = data.draw(st.sampled_from(VERBS), label="verb")
    send(server, method, path, body, data.draw(st.sampled_from(TYPES), label="type"))


def test_the_fuzzed_routes_are_the_real_ones(templates: list[str]) -> None:
    """A guard on the fuzz test itself: it aims at every rule, not a guess."""
    assert "/v1/{}" in templates and "/v1/{}:rotate" in templates
    assert "/v1/{}:validateApiKey" in templates and "/v1/auditLog:verify" in templates
    assert len(templates) >= 12
