"""Registers servicers with the gRPC server, so that in one place:

- every call is admitted by the callers gate (role) and refused fast while the store
  it needs is unreachable, before its handler runs;
- a request body that does not decode becomes INVALID_ARGUMENT naming the field (grpc's
  own handling would answer UNKNOWN);
- domain errors and request-check errors raised by a handler become their statuses
  (see ``service.errors``);
- each unary call is timed, each error status counted (``service.metrics``), and with
  `log_calls` each call is one log line (``service.logs``).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.unknown_fields import UnknownFieldSet

from service import callers, logs
from service.callers import Gate
from service.database import UNREACHABLE
from service.errors import (
    EXPECTED,
    InvalidArgument,
    StoreUnavailable,
    internal,
    to_status,
)
from service.metrics import Metrics

_LENGTH_DELIMITED = 2
log = logging.getLogger(__name__)


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
    """What a service asks of each call before its handler runs: an admitted caller
    with `role` (when there is a gate), then a store ready to answer (when `store`
    says why not, the call is refused at once)."""

    role: str
    gate: Gate | None = None
    store: Callable[[], StoreUnavailable | None] | None = None
    inflight: InFlight = field(default_factory=InFlight)

    def check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.gate is not None:
            self.gate.admit(context, self.role)
        if self.store is not None and (refusal := self.store()) is not None:
            raise refusal
        if isinstance(request, Undecodable):
            raise request.error
        return request


def register(
    server: grpc.aio.Server,
    servicer: Any,
    service: ServiceDescriptor,
    access: Access,
    metrics: Metrics,
    *,
    lossy: bool = False,
    log_calls: bool = False,
) -> None:
    """Serve every method of `service` with the same-named method of `servicer`,
    each call first passing `access`.

    With `lossy`, string fields that are not UTF-8 arrive with U+FFFD in place of the
    bad bytes instead of failing the request: right for ValidationService, where any
    junk in `secret` must simply be VERDICT_MALFORMED.
    """
    handlers = {}
    for method in service.methods:
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        observed = _Observed(method.name, metrics, log_calls)
        behaviour = getattr(servicer, method.name)
        make_handler = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make_handler(
            _streaming(behaviour, access.check, observed)
            if method.server_streaming
            else _unary(behaviour, access.check, access.inflight, observed),
            request_deserializer=_decoder(request_class, lossy),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


Check = Callable[[Any, grpc.aio.ServicerContext], Any]


class _Observed:
    """One method's figures (bound once, not looked up per call) and its log line."""

    __slots__ = ("duration", "log_calls", "method", "metrics")

    def __init__(self, method: str, metrics: Metrics, log_calls: bool) -> None:
        self.method = method
        self.metrics = metrics
        self.duration = metrics.timer(method)
        self.log_calls = log_calls

    def failed(self, code: grpc.StatusCode, reason: str) -> None:
        self.metrics.rpc_errors.labels(self.method, code.name).inc()
        if code in _CALLER_CODES and reason:
            self.metrics.failed_auth.labels(reason).inc()

    def log(self, request: Any, response: Any, code: grpc.StatusCode, elapsed: float) -> None:
        """The call's line: who, what, on which key, and how it ended. Names and the
        request id only: never a field that may hold a secret."""
        key = _key_named(request, response)
        logs.fields(
            logs.calls,
            "call",
            method=self.method,
            caller=callers.current().name,
            key=logs.resource(key),
            parent="" if key else logs.resource(getattr(request, "parent", "")),
            request_id=logs.request_id(getattr(request, "request_id", "")),
            outcome=code.name,
            duration_ms=round(elapsed * 1000, 2),
        )


def _key_named(request: Any, response: Any) -> str:
    """The key a call is about: the one it answered with, else the one it named."""
    for message in (response, request):
        for holder in (getattr(message, "api_key", None), message):
            if name := getattr(holder, "name", ""):
                return str(name)
    return ""


_CALLER_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def _unary(
    behaviour: Callable[..., Any], check: Check, inflight: InFlight, observed: _Observed
) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        inflight.count += 1
        started = time.perf_counter()
        if observed.log_calls:
            logs.method.set(observed.method)  # for the lines of the changes it makes
        statuses = _statuses(context, observed)
        response = None
        try:
            async with statuses:
                response = await behaviour(check(request, context), context)
            return response
        finally:
            inflight.count -= 1
            elapsed = time.perf_counter() - started
            observed.duration.observe(elapsed)
            if observed.log_calls:
                observed.log(request, response, statuses.code or grpc.StatusCode.OK, elapsed)

    return handle


def _streaming(
    behaviour: Callable[..., AsyncIterator[Any]], check: Check, observed: _Observed
) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _statuses(context, observed):
            async for response in behaviour(check(request, context), context):
                yield response

    return handle


class _statuses:
    """Errors raised inside become the RPC's status, and are counted. A class, not a
    generator-based context manager: this runs on every request and the generator
    costs 2 µs."""

    __slots__ = ("code", "context", "observed")

    def __init__(self, context: grpc.aio.ServicerContext, observed: _Observed) -> None:
        self.context = context
        self.observed = observed
        self.code: grpc.StatusCode | None = None  # of the error raised inside, if any

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if error is None or isinstance(error, asyncio.CancelledError):
            return
        if isinstance(error, grpc.aio.AbortError):  # the handler set the status itself
            if (code := self.context.code()) is not None:
                self.code = code
                self.observed.failed(code, "")
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
        self.observed.failed(status.code, getattr(error, "reason", ""))
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
