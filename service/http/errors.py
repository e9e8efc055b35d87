"""Errors over HTTP: Google's JSON error shape,
`{"error": {"code": 404, "message": …, "status": "NOT_FOUND", "details": [...]}}`, with the
standard mapping of gRPC codes to HTTP statuses. The status and its details are the
error mapper's (service.api.errors), carried over whole."""

import json
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from service.api.errors import DOMAIN

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
# Errors of HTTP itself: (status, the gRPC code's name it stands for).
NAMES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    500: "INTERNAL",
}
_DETAILS = "grpc-status-details-bin"
# The JSON Schema of `_body`'s shape, for /v1/openapi.json.
ERROR_SCHEMA = {
    "type": "object",
    "description": "Google's JSON error shape (AIP-193).",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status."},
                "message": {"type": "string", "description": "What went wrong, for people."},
                "status": {
                    "type": "string",
                    "enum": [code.name for code in HTTP_STATUS if code != grpc.StatusCode.OK],
                    "description": "The gRPC code's name.",
                },
                "details": {
                    "type": "array",
                    "description": "google.rpc details: an ErrorInfo with a stable `reason` "
                    "and domain `edgekeys` first, then e.g. a BadRequest.",
                    "items": {
                        "type": "object",
                        "properties": {"@type": {"type": "string"}},
                        "required": ["@type"],
                    },
                },
            },
            "required": ["code", "message", "status"],
        }
    },
    "required": ["error"],
}


def status_body(status: grpc.Status) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of a call that ended with `status`."""
    details: list[dict[str, Any]] = []
    for key, value in status.trailing_metadata or ():
        if key == _DETAILS:
            details = [json_format.MessageToDict(any_) for any_ in _rpc_status(value).details]
    code = HTTP_STATUS.get(status.code, 500)
    return code, _body(code, status.code.name, status.details, details)


def http_error(
    code: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """An error of HTTP itself (a path that does not exist, a body that does not parse,
    …) in the same shape; `field` names the request field a 400 is about."""
    details: list[dict[str, Any]] = [
        {"@type": _type(error_details_pb2.ErrorInfo), "reason": NAMES[code], "domain": DOMAIN}
    ]
    if field:
        violation = {"field": field, "description": message.removeprefix(f"{field}: ")}
        details.append(
            {"@type": _type(error_details_pb2.BadRequest), "fieldViolations": [violation]}
        )
    return json_response(code, _body(code, NAMES[code], message, details), headers)


def json_response(
    code: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=code,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type="application/json",
        headers=headers,
    )


def _body(code: int, name: str, message: str, details: list[dict[str, Any]]) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": name, "details": details}}


def _rpc_status(value: str | bytes) -> status_pb2.Status:
    status = status_pb2.Status()
    status.ParseFromString(value if isinstance(value, bytes) else value.encode("latin-1"))
    return status


def _type(message: Any) -> str:
    return f"type.googleapis.com/{message.DESCRIPTOR.full_name}"
