"""REST/JSON from the protos: one generic transcoder, driven by each method's
`google.api.http` rule alone (AIP-127), as Envoy's grpc_json_transcoder and
grpc-gateway are. A new RPC with a rule needs no HTTP code.

A request becomes the method's request message: the path's variables, then the body
(`body: "*"`: the whole message; `body: "field"`: that field), then the query
parameters for every other field, by proto name or JSON name (`api_key_id` or
`apiKeyId`), dotted for nested fields, values in their proto JSON form (a FieldMask as
`displayName,description`, a Timestamp in RFC 3339). It is then handed to the very
method gRPC calls (service.api.interceptors.Method), and the response is its proto JSON.
A server stream is sent as NDJSON, one response per line.
"""

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from google.api import annotations_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from service.api.interceptors import Method
from service.http.context import Aborted, HttpContext
from service.http.errors import http_error, json_response, status_body

_VARIABLE = re.compile(r"\{([\w.]+)(?:=([^}]*))?\}")
_SEGMENT = r"[^/:]+"  # IDs hold no ':', so a custom verb (`:rotate`) is never eaten
_NO_FIELD = re.compile(r'has no field named "([^"]+)"')
# A boolean query parameter, in any case, as Envoy's grpc_json_transcoder reads one.
_BOOLEANS = dict.fromkeys(("true", "t", "yes", "y", "1"), True) | dict.fromkeys(
    ("false", "f", "no", "n", "0"), False
)
_JSON_TYPES = ("application/json",)


class BadRequest(Exception):
    """A request that does not make a message: 400, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


@dataclass(frozen=True)
class Binding:
    """One HTTP rule of one method."""

    verb: str
    template: str  # as written in the proto, for the docs
    pattern: re.Pattern[str]
    variables: tuple[str, ...]  # the field paths the pattern's groups fill, in order
    body: str  # "", "*", or the field the body fills
    method: Method

    @property
    def input(self) -> Descriptor:
        return self.method.descriptor.input_type


def bindings(methods: Iterable[Method]) -> list[Binding]:
    """Every method's rule and additional bindings."""
    found = []
    for method in methods:
        rule = method.descriptor.GetOptions().Extensions[annotations_pb2.http]
        for each in (rule, *rule.additional_bindings):
            kind = each.WhichOneof("pattern")
            if kind is None:
                continue
            verb, template = (
                (each.custom.kind.upper(), each.custom.path)
                if kind == "custom"
                else (kind.upper(), getattr(each, kind))
            )
            pattern, variables = _compile(template)
            found.append(Binding(verb, template, pattern, variables, each.body, method))
    return found


def _compile(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    regex, variables, at = "", [], 0
    for match in _VARIABLE.finditer(template):
        regex += re.escape(template[at : match.start()])
        field, segments = match[1], match[2] or "*"
        inner = "/".join(
            ".+" if s == "**" else _SEGMENT if s == "*" else re.escape(s)
            for s in segments.split("/")
        )
        regex += f"({inner})"
        variables.append(field)
        at = match.end()
    regex += re.escape(template[at:])
    return re.compile(regex), tuple(variables)


class Transcoder:
    def __init__(self, methods: Iterable[Method]) -> None:
        self.bindings = bindings(methods)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer a request under /v1/ by the binding it matches."""
        path = request.rel_url.raw_path
        allowed = set()
        for binding in self.bindings:
            match = binding.pattern.fullmatch(path)
            if match is None:
                continue
            if binding.verb != request.method:
                allowed.add(binding.verb)
                continue
            return await self._call(binding, match.groups(), request)
        if allowed:
            return http_error(
                405,
                f"{request.method} is not allowed here; allowed: {', '.join(sorted(allowed))}",
                headers={"allow": ", ".join(sorted(allowed))},
            )
        return http_error(404, f"no such resource or method: {request.path}")

    async def _call(
        self, binding: Binding, values: tuple[str, ...], request: web.Request
    ) -> web.StreamResponse:
        try:
            message = await _message(binding, values, request)
        except BadRequest as error:
            return http_error(400, str(error), field=error.field or None)
        except web.HTTPRequestEntityTooLarge:
            return http_error(413, "the body is larger than 1 MiB (1,048,576 bytes)")
        except web.HTTPUnsupportedMediaType as error:
            return http_error(415, str(error.text))
        context = HttpContext(request)
        if binding.method.descriptor.server_streaming:
            return await _stream(binding.method, message, context, request)
        try:
            response = await binding.method.unary(message, context)
        except Aborted as aborted:
            code, body = status_body(aborted.status)
            return json_response(code, body, _NO_STORE)
        return json_response(200, json_format.MessageToDict(response), _NO_STORE)


# A response may carry a secret (CreateApiKey, RotateApiKey): never kept by a cache.
_NO_STORE = {"cache-control": "no-store"}


async def _stream(
    method: Method, message: Message, context: HttpContext, request: web.Request
) -> web.StreamResponse:
    """NDJSON: one response a line, as they come. An error before the first line is an
    HTTP error; after it, a last line `{"error": …}`."""
    responses = method.stream(message, context)
    try:
        first = await anext(responses, None)
    except Aborted as aborted:
        code, body = status_body(aborted.status)
        return json_response(code, body, _NO_STORE)
    stream = web.StreamResponse(headers={"content-type": "application/x-ndjson", **_NO_STORE})
    await stream.prepare(request)
    try:
        if first is not None:
            await stream.write(_line(json_format.MessageToDict(first)))
            async for response in responses:
                await stream.write(_line(json_format.MessageToDict(response)))
    except Aborted as aborted:
        await stream.write(_line(status_body(aborted.status)[1]))
    await stream.write_eof()
    return stream


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode() + b"\n"


async def _message(binding: Binding, values: tuple[str, ...], request: web.Request) -> Message:
    message = GetMessageClass(binding.input)()
    bound = {field.split(".")[0] for field in binding.variables}
    if binding.body:
        body = await json_body(request)
        within = "" if binding.body == "*" else binding.body
        for variable in binding.variables:  # a field in the path is never in the body too
            if _in_json(body, message.DESCRIPTOR, variable.split("."), within):
                raise BadRequest(variable, "is in the path; leave it out of the body")
        if within:
            _parse(body, getattr(message, within), within)
            bound.add(within)
        else:
            _parse(body, message, "")
            bound = {field.name for field in message.DESCRIPTOR.fields}
    for field, value in zip(binding.variables, values, strict=True):
        _set(message, field.split("."), unquote(value))
    query: dict[str, Any] = {}
    for name, value in request.rel_url.query.items():
        path = _field_path(message.DESCRIPTOR, name)
        if path is None or path[0].name in bound:
            raise BadRequest(name, "is not a query parameter of this method")
        _put(query, path, value)
    if query:
        _parse(query, message, "")
    return message


async def json_body(request: web.Request) -> dict[str, Any]:
    """The JSON object the body holds ({} when there is none)."""
    if not request.can_read_body:
        return {}
    if request.content_type not in _JSON_TYPES:
        raise web.HTTPUnsupportedMediaType(
            text=f"the body must be application/json, not {request.content_type or 'untyped'}"
        )
    raw = await request.read()  # at most client_max_size: HTTPRequestEntityTooLarge beyond
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise BadRequest("", f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("", "the body must be a JSON object")
    return body


def _parse(value: dict[str, Any], message: Message, prefix: str) -> None:
    """Merge proto JSON into `message`; what does not fit names the field."""
    try:
        json_format.ParseDict(value, message)
    except json_format.ParseError as error:
        text = str(error)
        unknown = _NO_FIELD.search(text)
        field = unknown[1] if unknown else _first_field(text)
        raise BadRequest(
            ".".join(p for p in (prefix, field) if p), text.split("  Available Fields")[0]
        ) from None


def _first_field(text: str) -> str:
    """The field a json_format error names (`Failed to parse displayName field: …`)."""
    found = re.search(r"parse (\w+) field", text)
    return found[1] if found else ""


def _in_json(body: Any, descriptor: Any, path: list[str], within: str) -> bool:
    """Whether a JSON body (of the whole message, or of its field `within`) sets the
    field at `path`, under its proto or its JSON name."""
    if within:
        if path[0] != within:
            return False
        descriptor, path = descriptor.fields_by_name[within].message_type, path[1:]
    for part in path:
        field = descriptor.fields_by_name[part]
        if not isinstance(body, dict):
            return False
        found = body.get(field.name, body.get(field.json_name))
        if found is None:
            return False
        body, descriptor = found, field.message_type
    return True


def _field_path(descriptor: Any, name: str) -> list[FieldDescriptor] | None:
    """The fields a query parameter names (`a.b` for nested), by proto or JSON name."""
    path = []
    for part in name.split("."):
        field = descriptor.fields_by_name.get(part) or _by_json_name(descriptor, part)
        if field is None:
            return None
        path.append(field)
        if field.type == FieldDescriptor.TYPE_MESSAGE and not _is_scalar_like(field):
            descriptor = field.message_type
        elif part != name.split(".")[-1]:
            return None
    leaf = path[-1]
    if leaf.type == FieldDescriptor.TYPE_MESSAGE and not _is_scalar_like(leaf):
        return None  # a message must be given by its fields
    return path


def _by_json_name(descriptor: Any, name: str) -> FieldDescriptor | None:
    return next((f for f in descriptor.fields if f.json_name == name), None)


# Well-known types that proto JSON writes as one string.
_STRING_LIKE = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)


def _is_scalar_like(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name in _STRING_LIKE


def _put(query: dict[str, Any], path: list[FieldDescriptor], value: str) -> None:
    """Place a query parameter's value in a proto JSON object, as its field expects."""
    for field in path[:-1]:
        query = query.setdefault(field.json_name, {})
    leaf = path[-1]
    typed = _typed(leaf, value)
    if leaf.is_repeated:
        query.setdefault(leaf.json_name, []).append(typed)
    elif leaf.json_name in query:
        raise BadRequest(leaf.name, "is given more than once")
    else:
        query[leaf.json_name] = typed


def _typed(field: FieldDescriptor, value: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        if value.lower() not in _BOOLEANS:
            raise BadRequest(field.name, f"expected true or false, not {value!r}")
        return _BOOLEANS[value.lower()]
    return value  # proto JSON reads numbers, enums and strings from strings


def _set(message: Message, path: list[str], value: str) -> None:
    for part in path[:-1]:
        message = getattr(message, part)
    setattr(message, path[-1], value)


def routes(transcoder: Transcoder) -> Iterator[tuple[str, str]]:
    """(verb, template) of every binding: for the docs and the logs."""
    for binding in transcoder.bindings:
        yield binding.verb, binding.template
