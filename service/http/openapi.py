"""`/v1/openapi.json`: an OpenAPI 3.1 document of everything the HTTP listener serves
as an API, made from what serves it — the transcoder's bindings (the protos'
`google.api.http` rules) and Gcore's route table (service.http.gcore.ROUTES) — so it
cannot describe a route that is not there, or miss one.

Schemas follow the proto JSON mapping, as the transcoder reads and writes it: JSON
(camelCase) names; 64-bit integers as strings; enums by name; Timestamp, Duration and
FieldMask as strings; no field is `required`, since proto JSON leaves out fields at their
default. Descriptions are the protos' comments.

The comments come from `edgekeys/v1/descriptors.binpb`, a descriptor set with source
info that `make protos` writes beside the stubs (the stubs' descriptors drop comments)
and that tests/test_generated_code.py checks is up to date with protos/, as it does the
stubs. That is protoc's own reading of the comments, attached to the very elements, at
no cost at start; parsing the .proto files here would be a second parser, and they are
not installed with the package anyway.

A resource-name variable (`{name=projects/*/apiKeys/*}`) is one field holding slashes,
which an OpenAPI path parameter cannot be: clients percent-encode a parameter's slashes
(so the path would no longer match), and `/v1/{name}/events` and `/v1/{parent}/events`
would be one path to OpenAPI. Each `*` of the pattern is a parameter of its own,
named after the collection before it (`/v1/projects/{project}/apiKeys/{apiKey}`), so any
client fills the path as it should; a `**` (none today) stays one parameter, whose
slashes a client must send unescaped: OpenAPI cannot express that.
"""

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from service.http import gcore
from service.http.errors import ERROR_SCHEMA
from service.http.transcoding import Binding

PACKAGE = "edgekeys.v1."
_VARIABLE = re.compile(r"\{([\w.]+)(?:=([^}]*))?\}")
_SCHEMAS = "#/components/schemas/"
_ERROR = {"$ref": "#/components/responses/Error"}
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"gcoreApiKey": []}, {"mutualTLS": []}]
_T = FieldDescriptor
_INT32 = {"type": "integer", "format": "int32"}
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0}
_INT64 = {"type": "string", "format": "int64"}  # proto JSON writes 64-bit integers as strings
_UINT64 = {"type": "string", "format": "uint64"}
_SCALARS: dict[int, dict[str, Any]] = {
    _T.TYPE_INT32: _INT32,
    _T.TYPE_SINT32: _INT32,
    _T.TYPE_SFIXED32: _INT32,
    _T.TYPE_UINT32: _UINT32,
    _T.TYPE_FIXED32: _UINT32,
    _T.TYPE_INT64: _INT64,
    _T.TYPE_SINT64: _INT64,
    _T.TYPE_SFIXED64: _INT64,
    _T.TYPE_UINT64: _UINT64,
    _T.TYPE_FIXED64: _UINT64,
    _T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _T.TYPE_FLOAT: {"type": "number", "format": "float"},
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_ANY = {
    "type": "object",
    "properties": {"@type": {"type": "string", "description": "The message's type URL."}},
    "required": ["@type"],
    "description": "A message of the type `@type` names, with its fields beside `@type`.",
}
# Well-known types, as proto JSON writes them (not as the messages they are).
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "Seconds with an `s` suffix, e.g. `3600s` or `1.5s`.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "format": "field-mask",
        "description": "Field paths by JSON name, comma-separated: `displayName,description`.",
    },
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": _ANY,
    "google.protobuf.BoolValue": _SCALARS[_T.TYPE_BOOL],
    "google.protobuf.StringValue": _SCALARS[_T.TYPE_STRING],
    "google.protobuf.BytesValue": _SCALARS[_T.TYPE_BYTES],
    "google.protobuf.Int32Value": _SCALARS[_T.TYPE_INT32],
    "google.protobuf.UInt32Value": _SCALARS[_T.TYPE_UINT32],
    "google.protobuf.Int64Value": _SCALARS[_T.TYPE_INT64],
    "google.protobuf.UInt64Value": _SCALARS[_T.TYPE_UINT64],
    "google.protobuf.FloatValue": _SCALARS[_T.TYPE_FLOAT],
    "google.protobuf.DoubleValue": _SCALARS[_T.TYPE_DOUBLE],
}
_DESCRIPTION = """\
API keys for AI models deployed at the edge: the REST/JSON form of edgekeys' gRPC API
(transcoded from the protos' `google.api.http` rules), and Gcore's v3 inference API-key
routes.

Callers authenticate with `Authorization: Bearer TOKEN` (or `APIKey TOKEN`, as Gcore's
SDK sends it) or a TLS client certificate, once the server has a callers file; without
one, no credentials are asked for. Errors are Google's JSON error shape on /v1 and
Gcore's `{message, reason}` on Gcore's routes."""


def document(
    bindings: Iterable[Binding], gcore_routes: Sequence[gcore.Route], version: str
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these bindings and Gcore's routes."""
    bindings = list(bindings)
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    names = [b.method.descriptor.name for b in bindings]
    tags: dict[str, str] = {}
    for index, binding in enumerate(bindings):
        method = binding.method.descriptor
        service = method.containing_service
        tags[service.name] = _comment(service.full_name)
        operation_id = (
            method.name if names.count(method.name) == 1 else f"{service.name}_{method.name}"
        )
        if operation_id in (o.get("operationId") for p in paths.values() for o in p.values()):
            operation_id = f"{operation_id}_{index}"
        path, operation = _operation(binding, schemas)
        operation = {"operationId": operation_id, "tags": [service.name], **operation}
        paths.setdefault(path, {})[binding.verb.lower()] = operation
    if gcore_routes:
        tags["Gcore"] = "Gcore's v3 inference API-key routes, for Gcore's SDK."
        for route in gcore_routes:
            path = _gcore_path(gcore.ROOT + route.path)
            paths.setdefault(path, {})[route.verb.lower()] = _gcore_operation(route)
        schemas["GcoreError"] = gcore.ERROR_SCHEMA
    schemas["Error"] = ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgekeys", "version": version, "description": _DESCRIPTION},
        "tags": [{"name": name, "description": text} for name, text in tags.items()],
        "security": _SECURITY,
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "responses": {
                "Error": {
                    "description": "An error, in Google's JSON error shape.",
                    "content": {"application/json": {"schema": {"$ref": _SCHEMAS + "Error"}}},
                },
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A caller's token (its SHA-256 is in the callers file).",
                },
                "gcoreApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`APIKey TOKEN`, as Gcore's SDK sends a caller's token.",
                },
                "mutualTLS": {
                    "type": "mutualTLS",
                    "description": "A TLS client certificate whose subject a caller has.",
                },
            },
        },
    }


def _operation(binding: Binding, schemas: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    method = binding.method.descriptor
    request: Descriptor = method.input_type
    path, parameters = _path(binding.template, request)
    in_path = {variable.split(".")[0] for variable in binding.variables}
    operation: dict[str, Any] = {"description": _comment(method.full_name)}
    if binding.body == "*":
        operation["requestBody"] = _body(_object(request, schemas, omit=in_path), required=False)
    elif binding.body:
        field = request.fields_by_name[binding.body]
        nested = {v.split(".", 1)[1] for v in binding.variables if v.startswith(f"{field.name}.")}
        # a field in the path is never in the body too: the body's schema lacks it
        inner = field.message_type
        schema = (
            _object(inner, schemas, omit=nested) if nested and inner else _field(field, schemas)
        )
        operation["requestBody"] = _body(schema)
    if binding.body != "*":
        unbound = (f for f in request.fields if f.name not in in_path | {binding.body})
        parameters += [q for f in unbound for q in _query(f, "", set())]
    if parameters:
        operation["parameters"] = parameters
    response = {"$ref": _SCHEMAS + _reference(method.output_type, schemas)}
    if method.server_streaming:
        success = {
            "description": f"A stream: one {method.output_type.name} a line (NDJSON), as they "
            "come. An error after the first line is a last line in the error shape.",
            "content": {"application/x-ndjson": {"schema": response}},
        }
    else:
        success = {"description": "OK", "content": {"application/json": {"schema": response}}}
    operation["responses"] = {"200": success, "default": _ERROR}
    return path, operation


def _path(template: str, request: Descriptor) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path of a template, and its path parameters."""
    parameters: list[dict[str, Any]] = []

    def expand(match: re.Match[str]) -> str:
        variable, pattern = match[1], match[2] or "*"
        chain = _chain(request, variable)
        field, json_name = chain[-1], ".".join(f.json_name for f in chain)
        segments, previous = [], ""
        for segment in pattern.split("/"):
            if segment in ("*", "**"):
                name = _singular(previous) if previous and segment == "*" else json_name
                while name in (p["name"] for p in parameters):
                    name += "_"
                note = (
                    f"A part of `{json_name}`, `{_shape(pattern)}`."
                    if segment == "*"
                    else f"`{json_name}`, slashes and all: send them unescaped (which OpenAPI "
                    "cannot express)."
                )
                parameters.append(
                    {
                        "name": name,
                        "in": "path",
                        "required": True,
                        "description": f"{note} {_comment(field.full_name)}".strip(),
                        "schema": {"type": "string", "pattern": "^[^/:]+$"}
                        if segment == "*"
                        else {"type": "string"},
                    }
                )
                segments.append(f"{{{name}}}")
            else:
                segments.append(segment)
            previous = segment
        return "/".join(segments)

    return _VARIABLE.sub(expand, template), parameters


def _shape(pattern: str) -> str:
    """`projects/*/apiKeys/*` as `projects/{project}/apiKeys/{apiKey}`."""
    parts, previous = [], ""
    for segment in pattern.split("/"):
        parts.append(f"{{{_singular(previous)}}}" if segment == "*" and previous else segment)
        previous = segment
    return "/".join(parts)


def _singular(collection: str) -> str:
    return collection.removesuffix("s") or collection


def _chain(request: Descriptor, variable: str) -> list[FieldDescriptor]:
    """The fields a dotted field path goes through, the last one named."""
    chain, descriptor = [], request
    for part in variable.split("."):
        chain.append(descriptor.fields_by_name[part])
        descriptor = chain[-1].message_type or descriptor
    return chain


def _query(field: FieldDescriptor, prefix: str, seen: set[str]) -> Iterator[dict[str, Any]]:
    """The query parameters of a field: itself, or each field of a message, dotted."""
    name = prefix + field.json_name
    message = field.message_type
    if message is not None and message.full_name not in _WELL_KNOWN:
        if _is_map(field) or field.is_repeated or message.full_name in seen:
            return  # the transcoder takes neither maps nor repeated messages from a query
        for inner in message.fields:
            yield from _query(inner, name + ".", seen | {message.full_name})
        return
    schema = _value(field, {})
    if field.is_repeated:
        schema = {"type": "array", "items": schema}
    parameter = {"name": name, "in": "query", "schema": schema}
    if text := _comment(field.full_name):
        parameter["description"] = text
    yield parameter


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _reference(message: Descriptor, schemas: dict[str, Any]) -> str:
    """The component name of a message, adding its schema (and those it uses) once."""
    name = message.full_name.removeprefix(PACKAGE)
    if name not in schemas:
        schemas[name] = {}  # taken, before the fields recurse into it
        schemas[name] = _object(message, schemas, omit=set())
    return name


def _object(message: Descriptor, schemas: dict[str, Any], omit: set[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            field.json_name: _field(field, schemas)
            for field in message.fields
            if field.name not in omit
        },
    }
    text = _comment(message.full_name)
    oneofs = [o for o in message.oneofs if not o.name.startswith("_")]  # "_x": proto3 optional
    for oneof in oneofs:
        members = ", ".join(f"`{f.json_name}`" for f in oneof.fields)
        text = f"{text}\n\nAt most one of {members} ({oneof.name}).".strip()
    if text:
        schema["description"] = text
    return schema


def _field(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if _is_map(field):
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": _value(_map_value(field), schemas),
        }
    elif field.is_repeated:
        schema = {"type": "array", "items": _value(field, schemas)}
    else:
        schema = _value(field, schemas)
    if text := _comment(field.full_name):
        schema = {**schema, "description": text}
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    if field_behavior_pb2.OUTPUT_ONLY in behaviors:
        schema["readOnly"] = True
    return schema


def _value(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    """The schema of one value of a field (one item, if repeated)."""
    if field.enum_type is not None:
        return _enum(field.enum_type)
    if field.message_type is not None:
        known = _WELL_KNOWN.get(field.message_type.full_name)
        if known is not None:
            return dict(known)
        return {"$ref": _SCHEMAS + _reference(field.message_type, schemas)}
    return dict(_SCALARS[field.type])


def _enum(enum: EnumDescriptor) -> dict[str, Any]:
    lines = [_comment(enum.full_name)] + [
        f"- `{value.name}`: {_comment(f'{enum.full_name}.{value.name}')}".rstrip(": ")
        for value in enum.values
    ]
    return {
        "type": "string",
        "enum": [value.name for value in enum.values],
        "description": "\n".join(line for line in lines if line),
    }


def _map_value(field: FieldDescriptor) -> FieldDescriptor:
    entry = field.message_type
    assert entry is not None
    value: FieldDescriptor = entry.fields_by_name["value"]
    return value


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and message.GetOptions().map_entry


def _gcore_path(route: str) -> str:
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route)


def _gcore_operation(route: gcore.Route) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": "project_id",
            "in": "path",
            "required": True,
            "description": "Gcore's project ID, the edgekeys project `projects/{project_id}`.",
            "schema": {"type": "integer", "minimum": 1},
        }
    ]
    if "{name}" in route.path:
        parameters.append(
            {
                "name": "name",
                "in": "path",
                "required": True,
                "description": "The key's name, its ID.",
                "schema": {"type": "string"},
            }
        )
    parameters += [
        {"name": name, "in": "query", "schema": {"type": "integer"}} for name in route.query
    ]
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "tags": ["Gcore"],
        "description": route.summary,
        "parameters": parameters,
    }
    if route.body is not None:
        operation["requestBody"] = _body(_gcore_body(route.body))
    success: dict[str, Any] = {"description": "OK" if route.returns else "No content"}
    if route.returns:
        success["content"] = {"application/json": {"schema": gcore.KEY_SCHEMAS[route.returns]}}
    error = {
        "description": "An error, in Gcore's shape.",
        "content": {"application/json": {"schema": {"$ref": _SCHEMAS + "GcoreError"}}},
    }
    operation["responses"] = {str(route.status): success, "default": error}
    return operation


_JSON_TYPES = {str: "string", type(None): "null", int: "integer", bool: "boolean"}


def _gcore_body(fields: gcore.Schema) -> dict[str, Any]:
    properties = {}
    for name, (types, _) in fields.items():
        kinds = [_JSON_TYPES[t] for t in types]
        properties[name] = {"type": kinds[0] if len(kinds) == 1 else kinds}
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _comment(full_name: str) -> str:
    return _comments().get(full_name, "")


@cache
def _comments() -> Mapping[str, str]:
    """Each element's leading comment, by full name (an enum value's: the enum's full
    name, a dot, the value's name), from the descriptor set `make protos` writes."""
    raw = (files("edgekeys.v1") / "descriptors.binpb").read_bytes()
    found: dict[str, str] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
        names = dict(_names(file))
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            if name and location.leading_comments:
                found[name] = _clean(location.leading_comments)
    return found


def _names(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    """(source path, full name) of every message, field, enum, value, service and method
    (the field numbers of descriptor.proto)."""
    package = f"{file.package}." if file.package else ""

    def message(m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> Any:
        name = scope + m.name
        yield path, name
        for i, field in enumerate(m.field):
            yield (*path, 2, i), f"{name}.{field.name}"
        for i, nested in enumerate(m.nested_type):
            yield from message(nested, (*path, 3, i), name + ".")
        for i, enum in enumerate(m.enum_type):
            yield from enums(enum, (*path, 4, i), name + ".")

    def enums(e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str) -> Any:
        yield path, scope + e.name
        for i, value in enumerate(e.value):
            yield (*path, 2, i), f"{scope}{e.name}.{value.name}"

    for i, m in enumerate(file.message_type):
        yield from message(m, (4, i), package)
    for i, e in enumerate(file.enum_type):
        yield from enums(e, (5, i), package)
    for i, service in enumerate(file.service):
        yield (6, i), package + service.name
        for j, method in enumerate(service.method):
            yield (6, i, 2, j), f"{package}{service.name}.{method.name}"


def _clean(comment: str) -> str:
    return "\n".join(line.removeprefix(" ").rstrip() for line in comment.splitlines()).strip()
