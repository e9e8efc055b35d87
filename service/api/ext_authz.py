"""Envoy's ext_authz over gRPC (`envoy.service.auth.v3.Authorization/Check`).

The route tells which deployment it serves in `context_extensions["deployment"]`; the
key comes from `x-api-key` or `Authorization: Bearer …` (x-api-key wins when both are
sent). Allowed requests go upstream without either header and with
`x-edgekeys-api-key: <key name>`; denied ones get 401 or 403 and a small JSON body
(429 with `retry-after` for a client over its failure limit; 503 from an edge follower
cut off from its upstream for longer than its max staleness).
"""

import functools
import json
import math
from collections.abc import Mapping

import grpc
from google.rpc import code_pb2, status_pb2

from edgekeys.v1 import validation_pb2 as vpb
from edgekeys.vendor.envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from edgekeys.vendor.envoy.service.auth.v3.external_auth_pb2 import (
    CheckRequest,
    CheckResponse,
    DeniedHttpResponse,
    OkHttpResponse,
)
from edgekeys.vendor.envoy.type.v3.http_status_pb2 import HttpStatus
from service.api.validator import Validator
from service.domain.names import deployment_project
from service.replication.freshness import REASON
from service.security.callers import scope

KEY_HEADER = "x-api-key"
IDENTITY_HEADER = "x-edgekeys-api-key"
_REMOVED = (KEY_HEADER, "authorization")
_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _denial(
    http_status: int, code: int, reason: str, message: str, **headers: str
) -> CheckResponse:
    body = json.dumps({"error": {"code": http_status, "reason": reason, "message": message}})
    headers = {"content-type": "application/json", **headers}
    return CheckResponse(
        status=status_pb2.Status(code=code, message=message),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=http_status),  # type: ignore[arg-type]
            headers=[
                HeaderValueOption(
                    header=HeaderValue(key=name.replace("_", "-"), value=value),
                    append_action=_OVERWRITE,
                )
                for name, value in headers.items()
            ],
            body=body,
        ),
    )


def _unauthenticated(reason: str, message: str) -> CheckResponse:
    return _denial(401, code_pb2.UNAUTHENTICATED, reason, message)


MISSING = _unauthenticated("API_KEY_MISSING", "send the API key in the x-api-key header")
NO_DEPLOYMENT = _denial(
    403,
    code_pb2.PERMISSION_DENIED,
    "ROUTE_HAS_NO_DEPLOYMENT",
    "this route names no deployment (context_extensions.deployment)",
)
DENIALS = {
    vpb.VERDICT_MALFORMED: _unauthenticated("VERDICT_MALFORMED", "not a valid API key"),
    vpb.VERDICT_NOT_FOUND: _unauthenticated("VERDICT_NOT_FOUND", "unknown or deleted API key"),
    vpb.VERDICT_EXPIRED: _unauthenticated("VERDICT_EXPIRED", "the API key has expired"),
    vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED: _denial(
        403,
        code_pb2.PERMISSION_DENIED,
        "VERDICT_DEPLOYMENT_NOT_ALLOWED",
        "the API key is not attached to this deployment",
    ),
}


@functools.lru_cache(maxsize=64)
def _rate_limited(seconds: int) -> CheckResponse:
    """429 with `retry-after`: when this client's next failure is allowed."""
    return _denial(
        429,
        code_pb2.RESOURCE_EXHAUSTED,
        "VERDICT_RATE_LIMITED",
        "too many failed attempts from this client; retry later",
        retry_after=str(seconds),
    )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The secret from x-api-key, else from a Bearer authorization; None if neither.
    Envoy sends header names in lower case; other callers may not."""
    key: str | None = headers.get(KEY_HEADER)
    authorization: str | None = headers.get("authorization")
    if key is None and authorization is None:
        lowered = {name.lower(): value for name, value in headers.items()}
        key, authorization = lowered.get(KEY_HEADER), lowered.get("authorization")
    if key is not None:
        return key
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip()
    return None


def _stale(message: str) -> CheckResponse:
    return _denial(503, code_pb2.UNAVAILABLE, REASON, message)


class AuthorizationService:
    def __init__(self, validator: Validator) -> None:
        self.validator = validator

    async def Check(
        self, request: CheckRequest, context: grpc.aio.ServicerContext
    ) -> CheckResponse:
        attributes = request.attributes
        deployment = attributes.context_extensions.get("deployment", "")
        if deployment_project(deployment) is None:
            return NO_DEPLOYMENT
        limited_to = scope(deployment)
        secret = presented_key(attributes.request.http.headers)
        if secret is None:
            return MISSING
        if stale := self.validator.stale():
            return _stale(stale.explanation())
        client = attributes.source.address.socket_address.address  # no port: one client
        verdict, entry = self.validator.verdict(
            secret, deployment, client, limited_to, self.validator.clock()
        )
        if verdict == vpb.VERDICT_RATE_LIMITED:
            return _rate_limited(max(1, math.ceil(self.validator.retry_after(client))))
        if verdict != vpb.VERDICT_ALLOWED or entry is None:
            return DENIALS[verdict]
        return _allowed(entry.name)


@functools.lru_cache(maxsize=100_000)
def _allowed(key_name: str) -> CheckResponse:
    """The answer for an allowed request depends on the key's name alone: built once
    per key (a response is only ever serialized, never changed)."""
    return CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=OkHttpResponse(
            headers=[
                HeaderValueOption(
                    header=HeaderValue(key=IDENTITY_HEADER, value=key_name),
                    append_action=_OVERWRITE,
                )
            ],
            headers_to_remove=_REMOVED,
        ),
    )
