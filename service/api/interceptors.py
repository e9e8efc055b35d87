"""How every call reaches a servicer: each method's behaviour wrapped once, so that in
one place every call

- is admitted by the callers gate (the service's role) and refused at once while the
  store it needs cannot answer, before its behaviour runs;
- gets INVALID_ARGUMENT naming the field when its bytes do not decode (grpc's own
  handling would answer UNKNOWN);
- has what its behaviour raises become its status (see ``service.api.errors``);
- is timed and its error status counted, and with `log_calls` is one log line.

`Calls` holds the wrapped methods and registers their handlers with grpc's own
generic-handler API. Not an interceptor (grpc.aio.ServerInterceptor): grpc runs the
interceptor pipeline on every call, which cost 8% more server CPU per ValidateApiKey and
17% per health check, measured A/B (README, "How it works"); a handler built once costs
nothing per call. The HTTP listener calls the very same wrapped behaviour, so gRPC and
HTTP cannot drift apart.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import empty_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.unknown_fields import UnknownFieldSet

from service.api import fields
from service.api.errors import EXPECTED, InvalidArgument, internal, to_status
from service.domain import names
from service.security import callers
from service.security.callers import Gate
from service.storage.database import UNREACHABLE, StoreUnavailable, Unavailable

_LENGTH_DELIMITED = 2
_CALLER_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
log = logging.getLogger(__name__)
calls = logging.getLogger("edgekeys.calls")  # one line per management or audit call


class Timer(Protocol):
    def observe(self, seconds: float) -> None: ...


class Figures(Protocol):
    """What the calls count (service.runtime.metrics serves it)."""

    def timer(self, method: str) -> Timer: ...
    def failed(self, method: str, code: str, reason: str) -> None: ...


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes are not a valid message."""

    error: InvalidArgument


class InFlight:
    """Unary calls being handled. Shutdown waits for these, not for streams: a client
    watching health would otherwise hold every stop to its full grace period."""

    def __init__(self) -> None:
        self.count = 0

    async def stop(self, server: grpc.aio.Server, grace: float) -> None:
        """Refuse new calls at once, give the unary calls in flight up to `grace`
        seconds, then cancel what is left (long-lived streams)."""
        if grace <= 0:
            await server.stop(None)
            return
        refusing = asyncio.create_task(server.stop(grace))
        deadline = asyncio.get_running_loop().time() + grace
        while self.count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await server.stop(None)  # a second stop, with no grace, cancels the rest
        await refusing


@dataclass(frozen=True)
class Access:
    """What a service asks of each call before its behaviour runs: an admitted caller
    with `role` (when there is a gate), then a store ready to answer (`store` says why
    not, when it is not)."""

    role: str
    gate: Gate | None = None
    store: Callable[[], Unavailable | None] | None = None

    def check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.gate is not None:
            self.gate.admit(context, self.role)
        if self.store is not None and (refusal := self.store()) is not None:
            raise refusal
        if isinstance(request, Undecodable):
            raise request.error
        return request


class Method:
    """One method of a service, its behaviour wrapped: what gRPC's handler and the HTTP
    listener both call. `unary` answers one response, `stream` yields them."""

    __slots__ = (
        "access",
        "behaviour",
        "decode",
        "descriptor",
        "figures",
        "handler",
        "inflight",
        "log_calls",
        "name",
        "timer",
    )

    def __init__(
        self,
        descriptor: MethodDescriptor,
        behaviour: Callable[..., Any],
        access: Access,
        figures: Figures,
        inflight: InFlight,
        *,
        lossy: bool,
        log_calls: bool,
    ) -> None:
        self.descriptor = descriptor
        self.name = descriptor.name
        self.behaviour = behaviour
        self.access = access
        self.figures = figures
        self.timer = figures.timer(self.name)  # bound once, not looked up per call
        self.inflight = inflight
        self.log_calls = log_calls
        self.decode = _decoder(GetMessageClass(descriptor.input_type), lossy)
        serialize = GetMessageClass(descriptor.output_type).SerializeToString
        self.handler = (
            grpc.unary_stream_rpc_method_handler(
                self.stream, request_deserializer=self.decode, response_serializer=serialize
            )
            if descriptor.server_streaming
            else grpc.unary_unary_rpc_method_handler(
                self.unary, request_deserializer=self.decode, response_serializer=serialize
            )
        )

    async def unary(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.inflight.count += 1
        started = time.perf_counter()
        statuses = _statuses(context, self)
        response = None
        try:
            async with statuses:
                response = await self.behaviour(self.access.check(request, context), context)
            return response
        finally:
            self.inflight.count -= 1
            elapsed = time.perf_counter() - started
            self.timer.observe(elapsed)
            if self.log_calls:
                self._log(request, response, statuses.code or grpc.StatusCode.OK, elapsed)

    async def stream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _statuses(context, self):
            async for response in self.behaviour(self.access.check(request, context), context):
                yield response

    def failed(self, code: grpc.StatusCode, reason: str) -> None:
        self.figures.failed(self.name, code.name, reason if code in _CALLER_CODES else "")

    def _log(self, request: Any, response: Any, code: grpc.StatusCode, elapsed: float) -> None:
        """The call's line: who, what, on which key, and how it ended. Names and the
        request id only: never a field that may hold a secret."""
        if not calls.isEnabledFor(logging.INFO):
            return
        key = _key_named(request, response)
        line = {
            "method": self.name,
            "caller": callers.current().name,
            "key": _resource(key),
            "parent": "" if key else _resource(getattr(request, "parent", "")),
            "request_id": _request_id(getattr(request, "request_id", "")),
            "outcome": code.name,
            "duration_ms": round(elapsed * 1000, 2),
        }
        calls.info("call", extra={"fields": line})


class Calls:
    """Every wrapped method, by its gRPC path (`/edgekeys.v1.ApiKeyService/GetApiKey`)."""

    def __init__(self, server: grpc.aio.Server, figures: Figures, inflight: InFlight) -> None:
        self.server = server
        self.figures = figures
        self.inflight = inflight
        self.methods: dict[str, Method] = {}

    def add(
        self,
        servicer: Any,
        service: ServiceDescriptor,
        access: Access,
        *,
        lossy: bool = False,
        log_calls: bool = False,
    ) -> None:
        """Serve every method of `service` with the same-named method of `servicer`,
        wrapped.

        With `lossy`, string fields that are not UTF-8 arrive with U+FFFD in place of the
        bad bytes instead of failing the request: right for ValidationService, where any
        junk in `secret` must simply be VERDICT_MALFORMED.
        """
        handlers = {}
        for descriptor in service.methods:
            method = Method(
                descriptor,
                getattr(servicer, descriptor.name),
                access,
                self.figures,
                self.inflight,
                lossy=lossy,
                log_calls=log_calls,
            )
            self.methods[f"/{service.full_name}/{descriptor.name}"] = method
            handlers[descriptor.name] = method.handler
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )


def _key_named(request: Any, response: Any) -> str:
    """The key a call is about: the one it answered with, else the one it named."""
    for message in (response, request):
        for holder in (getattr(message, "api_key", None), message):
            if name := getattr(holder, "name", ""):
                return str(name)
    return ""


def _resource(value: str) -> str:
    """A key or project name from a request, or "(malformed)": what a client wrote in
    a name field is logged only if it is a name."""
    if not value or names.parse_key(value) or names.parse_project(value):
        return value
    return "(malformed)"


def _request_id(value: str) -> str:
    try:
        return fields.request_id(value)
    except InvalidArgument:
        return "(malformed)"


class _statuses:
    """Errors raised inside become the call's status, and are counted. A class, not a
    generator-based context manager: this runs on every request and the generator
    costs 2 µs."""

    __slots__ = ("code", "context", "method")

    def __init__(self, context: grpc.aio.ServicerContext, method: Method) -> None:
        self.context = context
        self.method = method
        self.code: grpc.StatusCode | None = None  # of the error raised inside, if any

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if error is None or isinstance(error, asyncio.CancelledError):
            return
        if isinstance(error, grpc.aio.AbortError):  # the behaviour set the status itself
            if (code := self.context.code()) is not None:
                self.code = code
                self.method.failed(code, "")
            return
        if isinstance(error, EXPECTED):
            status = to_status(error)
        elif isinstance(error, UNREACHABLE):
            log.warning("the store failed during a request: %s", error)
            status = to_status(StoreUnavailable())
        elif isinstance(error, Exception):
            log.exception("internal error")  # the caller learns nothing of the internals
            status = internal()
        else:
            return
        self.code = status.code
        self.method.failed(status.code, getattr(error, "reason", ""))
        await self.context.abort_with_status(status)


def _decoder(message_class: type[Message], lossy: bool) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError:
            pass
        if lossy and (salvaged := _lossy(message_class, data)) is not None:
            return salvaged
        field = _bad_string(message_class.DESCRIPTOR, data)
        if field:
            return Undecodable(InvalidArgument(field, "is not valid UTF-8"))
        name = message_class.DESCRIPTOR.full_name
        return Undecodable(InvalidArgument("request", f"is not a valid {name} message"))

    return decode


def _fields(data: bytes) -> list[Any] | None:
    """The raw fields of a message body, or None when the wire format is corrupt."""
    try:
        field_set: Any = UnknownFieldSet(empty_pb2.Empty.FromString(data))
    except DecodeError:
        return None
    return list(field_set)


def _bad_string(descriptor: Any, data: bytes, prefix: str = "") -> str | None:
    """The path of the first string field whose bytes are not UTF-8."""
    for raw in _fields(data) or ():
        field = descriptor.fields_by_number.get(raw.field_number)
        if field is None or raw.wire_type != _LENGTH_DELIMITED:
            continue
        path: str = prefix + field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                raw.data.decode("utf-8")
            except UnicodeDecodeError:
                return path
        elif field.type == FieldDescriptor.TYPE_MESSAGE and (
            found := _bad_string(field.message_type, raw.data, path + ".")
        ):
            return found
    return None


def _lossy(message_class: type[Message], data: bytes) -> Message | None:
    """Rebuild a message made only of string and message fields, replacing bytes that
    are not UTF-8; None when it has other fields or the wire format is corrupt."""
    raw_fields = _fields(data)
    if raw_fields is None:
        return None
    message = message_class()
    descriptor: Any = message_class.DESCRIPTOR
    for raw in raw_fields:
        field = descriptor.fields_by_number.get(raw.field_number)
        if field is None:
            continue
        if raw.wire_type != _LENGTH_DELIMITED:
            return None
        value: Any
        if field.type == FieldDescriptor.TYPE_STRING:
            value = raw.data.decode("utf-8", "replace")
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type:
            value = _lossy(GetMessageClass(field.message_type), raw.data)
            if value is None:
                return None
        else:
            return None
        target = getattr(message, field.name)
        if field.is_repeated:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                target.add().CopyFrom(value)
            else:
                target.append(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, field.name, value)
    return message
