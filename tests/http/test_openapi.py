"""`/v1/openapi.json`: served without a token, valid OpenAPI 3.1 by a maintained
validator, covering every HTTP rule of the protos and every Gcore route, described by the
protos' comments, and true to what the server really answers."""

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from google.api import annotations_pb2
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from edgekeys.v1 import api_keys_pb2, audit_pb2, validation_pb2
from service.security import callers
from tests.api.test_tls import callers_file
from tests.conftest import RunningServer
from tests.http.test_listener import ON, base, call

ROOT = Path(__file__).resolve().parent.parent.parent
GCORE = "/cloud/v3/inference/{}/api_keys"


@pytest.fixture
def guarded(tmp_path: Path, serving: Callable[..., RunningServer]) -> tuple[RunningServer, str]:
    """A server whose callers must authenticate, and an admin's token."""
    token, digest = callers.new_token()
    table = callers.caller_table("portal", digest, ["admin", "auditor"], ["acme", "42"], None)
    return serving(callers_file=callers_file(tmp_path, table), **ON), f"Bearer {token}"


def fetch_document(server: RunningServer) -> dict[str, Any]:
    """The document, fetched as any client would: no token."""
    with urllib.request.urlopen(base(server) + "/v1/openapi.json", timeout=30) as reply:
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("application/json")
        document: dict[str, Any] = json.loads(reply.read())
    return document


def test_the_document_is_served_without_a_token_and_is_valid_openapi_3_1(
    guarded: tuple[RunningServer, str],
) -> None:
    server, _ = guarded
    assert call(base(server), "GET", "/v1/projects/acme/apiKeys")[0] == 401  # a token is needed
    document = fetch_document(server)
    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["gcoreApiKey"] == {
        **schemes["gcoreApiKey"],
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
    }


def test_a_broken_document_fails_the_validator(guarded: tuple[RunningServer, str]) -> None:
    """The validator does look: a path parameter the path does not declare fails it."""
    broken = fetch_document(guarded[0])
    operation = broken["paths"]["/v1/projects/{project}/apiKeys/{apiKey}"]["get"]
    operation["parameters"] = operation["parameters"][1:]
    with pytest.raises(Exception, match="project"):
        validate(broken, cls=OpenAPIV31SpecValidator)


def shape(path: str) -> str:
    """A path with its parameters unnamed: `/v1/projects/{}/apiKeys/{}:rotate`."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def rules() -> set[tuple[str, str, str]]:
    """(verb, path shape, RPC) of every HTTP rule in the protos, read here on their own."""
    found = set()
    for module in (api_keys_pb2, audit_pb2, validation_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                kind = rule.WhichOneof("pattern")
                if kind is None:
                    continue
                template = getattr(rule, kind)
                path = re.sub(
                    r"\{[\w.]+(?:=([^}]*))?\}",
                    lambda m: (m[1] or "*").replace("*", "{}"),
                    template,
                )
                found.add((kind, path, method.name))
    return found


def test_every_http_rule_and_gcore_route_is_an_operation_named_after_its_rpc(
    running_http: RunningServer,
) -> None:
    document = fetch_document(running_http)
    operations = {
        (verb, shape(path), operation["operationId"])
        for path, item in document["paths"].items()
        for verb, operation in item.items()
    }
    expected = rules()
    assert len(expected) >= 17  # every service's rules were read (17 today)
    assert ("post", "/v1/projects/{}/apiKeys/{}:rotate", "RotateApiKey") in expected
    gcore = {
        ("get", GCORE, "gcore_list_api_keys"),
        ("post", GCORE, "gcore_create_api_key"),
        ("get", GCORE + "/{}", "gcore_get_api_key"),
        ("patch", GCORE + "/{}", "gcore_update_api_key"),
        ("delete", GCORE + "/{}", "gcore_delete_api_key"),
    }
    assert operations == expected | gcore
    paths = document["paths"]
    key = paths["/v1/projects/{project}/apiKeys/{apiKey}"]
    assert [p["name"] for p in key["get"]["parameters"]] == ["project", "apiKey"]
    assert "application/json" in key["get"]["responses"]["200"]["content"]
    watch = paths["/v1/projects/{project}/events:watch"]["get"]["responses"]["200"]
    assert list(watch["content"]) == ["application/x-ndjson"]
    listed = paths["/v1/projects/{project}/apiKeys"]["get"]["parameters"]
    query = {p["name"]: p["schema"] for p in listed if p["in"] == "query"}
    assert query["pageSize"]["type"] == "integer"
    assert query["showDeleted"]["type"] == "boolean"
    assert query["expireBefore"] == {"type": "string", "format": "date-time"}
    update = key["patch"]
    assert {p["name"] for p in update["parameters"] if p["in"] == "query"} == {
        "updateMask",
        "requestId",
    }
    body = update["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "name" not in body  # in the path, so never in the body
    assert "displayName" in body


@pytest.fixture
def running_http(serving: Callable[..., RunningServer]) -> RunningServer:
    return serving(**ON)


def comment_above(proto: str, declaration: str) -> str:
    """The `//` comment lines right above a declaration in a .proto file, as text."""
    lines = (ROOT / "protos" / "edgekeys" / "v1" / proto).read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(declaration))
    comment: list[str] = []
    while lines[at - 1].strip().startswith("//"):
        at -= 1
        comment.insert(0, lines[at].strip().removeprefix("//").removeprefix(" "))
    return "\n".join(comment)


def test_descriptions_are_the_protos_comments(running_http: RunningServer) -> None:
    document = fetch_document(running_http)
    schemas = document["components"]["schemas"]
    hint = schemas["ApiKey"]["properties"]["secretHint"]
    assert hint["description"] == comment_above("api_keys.proto", "string secret_hint = 10")
    assert hint["description"].startswith("A reminder of the secret for people")
    assert hint["readOnly"] is True  # OUTPUT_ONLY
    rotate = document["paths"]["/v1/projects/{project}/apiKeys/{apiKey}:rotate"]["post"]
    assert rotate["description"] == comment_above("api_keys.proto", "rpc RotateApiKey(")
    position = schemas["AuditEvent"]["properties"]["position"]
    assert position == {
        "type": "string",  # int64, as proto JSON writes it
        "format": "int64",
        "description": comment_above("audit.proto", "int64 position = 1;"),
    }
    state = schemas["ApiKey"]["properties"]["state"]
    assert state["enum"] == ["STATE_UNSPECIFIED", "STATE_ACTIVE", "STATE_DELETED"]


def strict(schema: Any) -> Any:
    """The schemas with no property beyond those they list (but an Any's), so that a
    field the server sends and the document lacks fails the validation."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        properties = schema.get("properties")
        if isinstance(properties, dict) and "@type" not in properties:
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def check(document: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """Validate `value` against `schema` (which may $ref the document's components)."""
    root = {**strict(schema), "components": strict(document["components"])}
    validator = jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(value)


def content(operation: dict[str, Any], status: str = "200") -> dict[str, Any]:
    schema: dict[str, Any] = operation["responses"][status]["content"]["application/json"]["schema"]
    return schema


def fill(path: str, **values: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m[1]], path)


def test_real_requests_and_responses_match_the_documents_schemas(
    guarded: tuple[RunningServer, str],
) -> None:
    server, token = guarded
    url = base(server)
    document = fetch_document(server)
    paths = document["paths"]

    # CreateApiKey, by the document's own path and body schema
    create = paths["/v1/projects/{project}/apiKeys"]["post"]
    body = {
        "displayName": "from the document",
        "deployments": ["projects/acme/deployments/llama"],
        "expireTime": "2031-01-01T00:00:00Z",
    }
    check(document, create["requestBody"]["content"]["application/json"]["schema"], body)
    path = fill("/v1/projects/{project}/apiKeys", project="acme") + "?apiKeyId=documented"
    status, created = call(url, "POST", path, body, token)
    assert status == 200
    check(document, content(create), created)
    with pytest.raises(jsonschema.ValidationError):  # the check can fail
        check(document, content(create), {**created, "secret": 7})

    # GetApiKey: the real JSON against GetApiKeyResponse's schema
    get = paths["/v1/projects/{project}/apiKeys/{apiKey}"]["get"]
    assert content(get) == {"$ref": "#/components/schemas/GetApiKeyResponse"}
    status, got = call(
        url,
        "GET",
        fill("/v1/projects/{project}/apiKeys/{apiKey}", project="acme", apiKey="documented"),
        None,
        token,
    )
    assert status == 200
    assert got["apiKey"]["state"] == "STATE_ACTIVE"
    assert {"createTime", "secretHint", "etag", "expireTime"} <= set(got["apiKey"])
    check(document, content(get), got)
    with pytest.raises(jsonschema.ValidationError):  # an undocumented field fails
        check(document, content(get), {"apiKey": {**got["apiKey"], "surprise": 1}})

    # an audit response, with int64 positions as strings
    events = paths["/v1/projects/{project}/apiKeys/{apiKey}/events"]["get"]
    status, history = call(url, "GET", "/v1/projects/acme/apiKeys/documented/events", None, token)
    assert status == 200 and history["events"][0]["eventType"] == "KeyCreated"
    check(document, content(events), history)

    # an error, in Google's shape
    status, error = call(url, "GET", "/v1/projects/acme/apiKeys/nowhere", None, token)
    assert status == 404
    assert get["responses"]["default"] == {"$ref": "#/components/responses/Error"}
    error_schema = document["components"]["responses"]["Error"]["content"]["application/json"]
    check(document, error_schema["schema"], error)

    # Gcore: a created key and a listed page against the route table's schemas
    gcore = paths["/cloud/v3/inference/{project_id}/api_keys"]
    status, made = call(
        url, "POST", "/cloud/v3/inference/42/api_keys", {"name": "gcore-key"}, token
    )
    assert status == 200
    check(document, content(gcore["post"]), made)
    status, page = call(url, "GET", "/cloud/v3/inference/42/api_keys", None, token)
    assert status == 200 and page["count"] == 1
    check(document, content(gcore["get"]), page)
