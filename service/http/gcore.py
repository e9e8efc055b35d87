"""Gcore's v3 routes for inference API keys, as Gcore's official SDK (PyPI `gcore`) drives
them, over ApiKeyService's wrapped methods (service.api.interceptors): a Gcore call is
one or two calls of those, so the callers gate, the rules, the rate limits, the actor
and the metrics are the very ones gRPC has. This module only translates.

- `POST /cloud/v3/inference/{project_id}/api_keys` {name, description?, expires_at?}
  → CreateApiKey: the Gcore `name` is the key's ID and its display name;
- `GET …/api_keys?limit=&offset=` → ListApiKeys (page_size, skip): {count, results},
  `count` being total_size, which the SDK's auto-paging needs;
- `GET`, `PATCH` {description}, `DELETE …/api_keys/{name}` → GetApiKey, UpdateApiKey,
  DeleteApiKey. Gcore refuses to delete a key attached to a deployment (409); the
  check and the delete are tied by the key's etag, so an attach in between fails the
  delete instead of slipping past the check.

`{project_id}` is Gcore's integer project ID, which is also an edgekeys project
(a project number). Deleted keys do not exist for Gcore (404). Errors are JSON
`{"message": …, "reason": …}` with the statuses the SDK maps to its exceptions, and
`x-should-retry: false` where the SDK's retries (it retries 409 and 429) would only
meet the same refusal.
"""

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from edgekeys.v1 import api_keys_pb2 as pb
from service.api.interceptors import Method
from service.domain.clock import written_moment
from service.domain.names import last_id
from service.http.context import Aborted, HttpContext
from service.http.errors import json_response, status_body
from service.http.transcoding import BadRequest, json_body

ROOT = "/cloud/v3/inference/{project_id:[0-9]+}/api_keys"
SERVICE = pb.DESCRIPTOR.services_by_name["ApiKeyService"].full_name
DEFAULT_LIMIT = 100  # Gcore's documented default
MAX_INT32 = 2**31 - 1
_INTEGER = re.compile(r"-?[0-9]{1,18}")
# Our request fields as Gcore's API names them, for the messages of bad input.
_GCORE_FIELDS = {
    "parent": "project_id",
    "api_key_id": "name",
    "name": "name",
    "api_key.name": "name",
    "api_key.display_name": "name",
    "api_key.description": "description",
    "api_key.expire_time": "expires_at",
    "page_size": "limit",
    "skip": "offset",
}
# Refusals a retry would only meet again: ALREADY_EXISTS, and a failure limit that
# holds far longer than the SDK's backoff of about a second.
_FINAL = frozenset({grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED})
# (JSON type, what a message calls it) of each body field; None stands for JSON null.
Schema = Mapping[str, tuple[tuple[type, ...], str]]
_TEXT = ((str,), "a string")
_TEXT_OR_NULL = ((str, type(None)), "a string or null")
_CREATE: Schema = {"name": _TEXT, "description": _TEXT_OR_NULL, "expires_at": _TEXT_OR_NULL}
_UPDATE: Schema = {"description": _TEXT_OR_NULL}
# A response may carry a secret (create): never kept by a cache.
_NO_STORE = {"cache-control": "no-store"}


class Refused(Exception):
    """A Gcore call refused by this adapter (its body, its query, Gcore's rules)."""

    def __init__(
        self, status: int, message: str, reason: str = "INVALID_ARGUMENT", final: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.final = final  # a retry would meet the same refusal


Query = dict[str, int]
Body = dict[str, Any]


@dataclass(frozen=True)
class Route:
    """One Gcore route: how it is served and, for /v1/openapi.json, what it takes and
    returns. ROUTES is the one table of both, so the document cannot drift."""

    verb: str
    path: str  # under ROOT: "" (the collection) or "/{name}" (a key)
    handler: str  # the `_Routes` method that answers it
    operation_id: str
    summary: str
    body: Schema | None = None  # the JSON fields it takes, if it reads a body
    query: tuple[str, ...] = ()  # the integer query parameters it takes
    status: int = 200
    returns: str = ""  # the shape answered: a key of KEY_SCHEMAS, or "" for none


ROUTES: Sequence[Route] = (
    Route(
        "GET",
        "",
        "list_keys",
        "gcore_list_api_keys",
        "Lists the project's keys, oldest first: `count` is the total, `results` one page.",
        query=("limit", "offset"),
        returns="list",
    ),
    Route(
        "POST",
        "",
        "create_key",
        "gcore_create_api_key",
        "Creates a key named `name` (its ID and display name) and returns its secret, "
        "shown only here. `expires_at`: an ISO 8601 date (00:00 UTC that day) or time.",
        body=_CREATE,
        returns="created",
    ),
    Route(
        "GET",
        "/{name}",
        "get_key",
        "gcore_get_api_key",
        "Returns a key (a deleted key is 404).",
        returns="key",
    ),
    Route(
        "PATCH",
        "/{name}",
        "update_key",
        "gcore_update_api_key",
        "Changes a key's description (null: none).",
        body=_UPDATE,
        returns="key",
    ),
    Route(
        "DELETE",
        "/{name}",
        "delete_key",
        "gcore_delete_api_key",
        "Deletes a key; 409 while it is attached to a deployment.",
        status=204,
    ),
)
# JSON Schemas of what the routes answer, as `_gcore_key` writes a key: every field.
_KEY_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "description": "The key's ID."},
    "description": {"type": ["string", "null"]},
    "expires_at": {"type": ["string", "null"], "format": "date-time"},
    "deployment_names": {
        "type": "array",
        "items": {"type": "string"},
        "description": "The IDs of the deployments the key may reach.",
    },
    "created_at": {"type": "string", "format": "date-time"},
}
_SECRET = {"secret": {"type": "string", "description": "The secret, shown only here."}}


def _object(fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": fields, "required": list(fields)}


KEY_SCHEMAS: Mapping[str, dict[str, Any]] = {
    "key": _object(_KEY_FIELDS),
    "created": _object({**_KEY_FIELDS, **_SECRET}),
    "list": _object(
        {
            "count": {"type": "integer", "description": "How many keys the project has."},
            "results": {"type": "array", "items": _object(_KEY_FIELDS)},
        }
    ),
}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"message": {"type": "string"}, "reason": {"type": "string"}},
    "required": ["message", "reason"],
}

Verb = Callable[[web.Request, Query, Body], Awaitable[web.StreamResponse]]


def served(methods: Mapping[str, Method]) -> bool:
    """Whether this server has Gcore's routes: only with ApiKeyService (an edge follower
    has not: Gcore's paths are then unknown there, as any other)."""
    return f"/{SERVICE}/CreateApiKey" in methods


def with_gcore_routes(app: web.Application, methods: Mapping[str, Method]) -> web.Application:
    """`app` with Gcore's routes, when `served`."""
    if served(methods):
        routes = _Routes({name: methods[f"/{SERVICE}/{name}"] for name in _USED})
        for path in dict.fromkeys(route.path for route in ROUTES):
            table = {route.verb: route for route in ROUTES if route.path == path}
            app.router.add_route("*", ROOT + path, routes.answerer(table))
        app.router.add_route("*", "/cloud/{tail:.*}", _unknown)
    return app


_USED = ("CreateApiKey", "GetApiKey", "ListApiKeys", "UpdateApiKey", "DeleteApiKey")


class _Routes:
    def __init__(self, methods: dict[str, Method]) -> None:
        self.methods = methods

    def answerer(self, table: Mapping[str, Route]) -> Callable[[web.Request], Any]:
        """The handler of one path: the route of the request's verb."""

        async def answer(request: web.Request) -> web.StreamResponse:
            return await _answer(request, table, self)

        return answer

    async def create_key(
        self, request: web.Request, query: Query, body: Body
    ) -> web.StreamResponse:
        name = body.get("name")
        if not name:
            raise Refused(400, "name: is required")
        key = pb.ApiKey(display_name=name, description=body.get("description") or "")
        if (expires_at := body.get("expires_at")) is not None:
            try:
                key.expire_time.FromDatetime(written_moment(expires_at))
            except (ValueError, OverflowError):
                raise Refused(
                    400, "expires_at: expected an ISO 8601 date (00:00 UTC that day) or time"
                ) from None
        parent = f"projects/{request.match_info['project_id']}"
        created = await self._call(
            "CreateApiKey",
            request,
            pb.CreateApiKeyRequest(parent=parent, api_key_id=name, api_key=key),
        )
        return json_response(
            200, {**_gcore_key(created.api_key), "secret": created.secret}, _NO_STORE
        )

    async def list_keys(self, request: web.Request, query: Query, body: Body) -> web.StreamResponse:
        limit = query.get("limit", DEFAULT_LIMIT)
        if limit < 1:  # Gcore's range is 1 to 1000; to ListApiKeys, 0 would mean 50
            raise Refused(400, "limit: must be at least 1")
        listed = await self._call(
            "ListApiKeys",
            request,
            pb.ListApiKeysRequest(
                parent=f"projects/{request.match_info['project_id']}",
                page_size=limit,  # ListApiKeys caps it at 1000, as Gcore does
                skip=query.get("offset", 0),
            ),
        )
        results = [_gcore_key(key) for key in listed.api_keys]
        return json_response(200, {"count": listed.total_size, "results": results})

    async def get_key(self, request: web.Request, query: Query, body: Body) -> web.StreamResponse:
        return json_response(200, _gcore_key(await self._live_key(request)))

    async def update_key(
        self, request: web.Request, query: Query, body: Body
    ) -> web.StreamResponse:
        if "description" not in body:  # `{}`: nothing to change
            return json_response(200, _gcore_key(await self._live_key(request)))
        key = pb.ApiKey(name=_key_name(request), description=body["description"] or "")
        updated = await self._call(
            "UpdateApiKey",
            request,
            pb.UpdateApiKeyRequest(api_key=key, update_mask=FieldMask(paths=["description"])),
        )
        return json_response(200, _gcore_key(updated.api_key))

    async def delete_key(
        self, request: web.Request, query: Query, body: Body
    ) -> web.StreamResponse:
        key = await self._live_key(request)
        if key.deployments:
            attached = ", ".join(last_id(d) for d in key.deployments)
            raise Refused(
                409,
                f"the API key is attached to deployments ({attached}); detach it first",
                "API_KEY_ATTACHED",
                final=True,
            )
        # With the etag read above: attached meanwhile, the key is not deleted (409,
        # ABORTED), and the SDK's retry checks again.
        await self._call(
            "DeleteApiKey", request, pb.DeleteApiKeyRequest(name=key.name, etag=key.etag)
        )
        return web.Response(status=204)

    async def _live_key(self, request: web.Request) -> pb.ApiKey:
        """The key the path names; a deleted key is as unknown to Gcore as no key."""
        name = _key_name(request)
        found = await self._call("GetApiKey", request, pb.GetApiKeyRequest(name=name))
        if found.api_key.state == pb.ApiKey.STATE_DELETED:
            raise Refused(404, f"{name} does not exist", "API_KEY_NOT_FOUND")
        key: pb.ApiKey = found.api_key
        return key

    async def _call(self, method: str, request: web.Request, message: Message) -> Any:
        return await self.methods[method].unary(message, HttpContext(request))


async def _answer(
    request: web.Request, table: Mapping[str, Route], routes: _Routes
) -> web.StreamResponse:
    route = table.get(request.method)
    try:
        if route is None:
            allowed = ", ".join(table)
            raise Refused(
                405, f"{request.method} is not allowed here; allowed: {allowed}", "NOT_ALLOWED"
            )
        query = _query(request, route.query)
        body = _fields(await _body(request), route.body) if route.body is not None else {}
        verb: Verb = getattr(routes, route.handler)
        return await verb(request, query, body)
    except Refused as refused:
        headers = {"allow": ", ".join(table)} if refused.status == 405 else {}
        return _error(refused.status, str(refused), refused.reason, refused.final, headers)
    except Aborted as aborted:
        return _refusal(aborted.status, request)


async def _unknown(request: web.Request) -> web.StreamResponse:
    return _error(404, f"no such route: {request.path}", "NOT_FOUND")


def _refusal(status: grpc.Status, request: web.Request) -> web.Response:
    """A wrapped method's refusal as Gcore's API would say it: the same status as our
    REST mapping, but 404 for a deleted key, and messages naming Gcore's fields."""
    code, body = status_body(status)
    error = body["error"]
    details = error["details"]
    reason = next((d["reason"] for d in details if "reason" in d), "")
    message = error["message"]
    fields = [v["field"] for d in details for v in d.get("fieldViolations", ())]
    if fields and fields[0] in _GCORE_FIELDS:
        message = f"{_GCORE_FIELDS[fields[0]]}: {message.removeprefix(fields[0] + ': ')}"
    if reason == "API_KEY_DELETED":
        code, reason, message = 404, "API_KEY_NOT_FOUND", f"{_key_name(request)} does not exist"
    return _error(code, message, reason, status.code in _FINAL)


def _error(
    code: int, message: str, reason: str, final: bool = False, headers: dict[str, str] | None = None
) -> web.Response:
    headers = {**(headers or {}), **({"x-should-retry": "false"} if final else {})}
    return json_response(code, {"message": message, "reason": reason}, headers)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        return await json_body(request)
    except BadRequest as error:
        raise Refused(400, str(error)) from None
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, "the body is larger than 1 MiB (1,048,576 bytes)", "TOO_LARGE") from None
    except web.HTTPUnsupportedMediaType as error:
        raise Refused(415, str(error.text), "NOT_JSON") from None


def _fields(body: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """The body, if each field is one Gcore's route takes, of the JSON type it takes."""
    for field, value in body.items():
        if field not in schema:
            known = ", ".join(schema)
            raise Refused(400, f"{field}: is not a field of this request; known: {known}")
        types, named = schema[field]
        if not isinstance(value, types):
            raise Refused(400, f"{field}: must be {named}")
    return body


def _query(request: web.Request, known: tuple[str, ...]) -> dict[str, int]:
    """The integer query parameters of a request, each one of `known`, at most once."""
    found: dict[str, int] = {}
    for name, value in request.rel_url.query.items():
        if name not in known:
            raise Refused(400, f"{name}: is not a query parameter of this route")
        if name in found:
            raise Refused(400, f"{name}: is given more than once")
        if not _INTEGER.fullmatch(value):
            raise Refused(400, f"{name}: must be an integer")
        found[name] = max(-MAX_INT32, min(int(value), MAX_INT32))  # to int32, the fields' type
    return found


def _key_name(request: web.Request) -> str:
    """Our name of the key the path names (checked by the method it goes to)."""
    return f"projects/{request.match_info['project_id']}/apiKeys/{request.match_info['name']}"


def _gcore_key(key: pb.ApiKey) -> dict[str, Any]:
    """A key as Gcore's API shows it: every field present, null when unset."""
    return {
        "name": last_id(key.name),
        "description": key.description or None,
        "expires_at": key.expire_time.ToJsonString() if key.HasField("expire_time") else None,
        "deployment_names": [last_id(d) for d in key.deployments],
        "created_at": key.create_time.ToJsonString(),
    }
