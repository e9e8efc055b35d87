"""How the console calls the service: the very wrapped methods gRPC calls
(service.api.interceptors.Method), with a context whose caller is the session's, so a
page can do nothing that the same caller could not do over gRPC."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message

from service.api.interceptors import Method
from service.http.context import Aborted, HttpContext
from service.http.errors import status_body

KEYS = "/edgekeys.v1.ApiKeyService/"
AUDIT = "/edgekeys.v1.AuditService/"


class ConsoleContext(HttpContext):
    """A console request as the context of a call: the caller is the digest of the
    token typed at sign-in (see service.security.callers.Gate), or the TLS client
    certificate; an `Authorization` header a page request may carry is ignored."""

    __slots__ = ("token_digest",)

    def __init__(self, request: web.Request, token_digest: bytes | None) -> None:
        super().__init__(request)
        self.token_digest = token_digest

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


@dataclass
class Refusal(Exception):  # not frozen: raising sets __traceback__
    """A call that ended with an error status, read for a page: the HTTP status it
    stands for, the gRPC code, the ErrorInfo reason, the message and the fields that
    BadRequest names."""

    status: int
    code: grpc.StatusCode
    reason: str
    message: str
    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, aborted: Aborted) -> "Refusal":
        status, body = status_body(aborted.status)
        reason, fields = "", {}
        for detail in body["error"]["details"]:
            reason = detail.get("reason", reason)
            for violation in detail.get("fieldViolations", ()):
                field_name, description = violation["field"], violation["description"]
                fields[field_name] = description.removeprefix(f"{field_name}: ")
        return cls(status, aborted.status.code, reason, aborted.status.details, fields)


class Client:
    """The service as one request's caller sees it."""

    def __init__(
        self, methods: Mapping[str, Method], request: web.Request, token_digest: bytes | None
    ) -> None:
        self.methods = methods
        self.request = request
        self.token_digest = token_digest

    async def keys(self, rpc: str, message: Message) -> Any:
        return await self._call(KEYS + rpc, message)

    async def audit(self, rpc: str, message: Message) -> Any:
        return await self._call(AUDIT + rpc, message)

    async def _call(self, path: str, message: Message) -> Any:
        context = ConsoleContext(self.request, self.token_digest)
        try:
            return await self.methods[path].unary(message, context)
        except Aborted as aborted:
            raise Refusal.of(aborted) from None
