"""An HTTP request as the context of a call: what the wrapped methods of
service.api.interceptors need of a grpc.aio.ServicerContext, so that an HTTP call passes
the very same gate, rules, error mapping and metrics as a gRPC one."""

import ssl
from collections.abc import Sequence

import grpc
from aiohttp import web
from cryptography import x509


class Aborted(Exception):
    """The call ended with `status` (the error mapper's: a grpc.Status)."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


class HttpContext:
    """The caller's credentials (`Authorization`, or the TLS client certificate), the
    peer, and an abort that raises `Aborted`."""

    __slots__ = ("_code", "_metadata", "_peer", "_subject")

    def __init__(self, request: web.Request) -> None:
        authorization = request.headers.get("authorization")
        self._metadata = (("authorization", authorization),) if authorization else ()
        self._peer = _peer(request)
        self._subject = _subject(request)
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_subject": [self._subject.encode()]} if self._subject else {}

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort_with_status(self, status: grpc.Status) -> None:
        self._code = status.code
        raise Aborted(status)


def _peer(request: web.Request) -> str:
    """The client's address in gRPC's form (`ipv4:HOST:PORT`, `ipv6:[HOST]:PORT`): the
    failure limits count it the same whichever way it came."""
    peername = request.transport.get_extra_info("peername") if request.transport else None
    if not peername:
        return "unknown"
    host, port = peername[0], peername[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _subject(request: web.Request) -> str | None:
    """The TLS client certificate's subject in RFC 4514 form, as gRPC reports it."""
    transport = request.transport
    tls = transport.get_extra_info("ssl_object") if transport else None
    if not isinstance(tls, ssl.SSLObject):
        return None
    der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else None
