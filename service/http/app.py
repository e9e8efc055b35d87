"""The HTTP listener: one aiohttp application in the same event loop as the gRPC
server, reaching the same wrapped methods (service.api.interceptors), so the callers
gate, the rules, the rate limits, the actor of each change and the metrics are the
same whichever way a call comes.

Routes: `/healthz` and `/v1/openapi.json` (no token needed), the REST/JSON
transcoding of the protos' HTTP rules, and what other modules add (Gcore's routes, the
console). Every error is a JSON body in Google's shape; no request body is read past
1 MiB (413); the access log never holds a query string.
"""

import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from service.domain import keyformat
from service.http.errors import http_error
from service.http.transcoding import Transcoder
from service.security import callers

MAX_BODY = 1024 * 1024  # bytes
access = logging.getLogger("edgekeys.http")  # one line per HTTP request
log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# A path segment logged as it is: what IDs, numbers, custom verbs and our own routes are
# made of. Anything else (a secret or token pasted into a URL) is logged as "(malformed)".
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}(?::[A-Za-z]{1,40})?|")
_SECRETS = (keyformat.PREFIX, callers.TOKEN_PREFIX)


def logged_path(path: str) -> str:
    """The path for the access log, a segment at a time: each one is a name, or is
    "(malformed)", as `edgekeys.calls` logs a name field."""
    return "/".join(
        part
        if _SEGMENT.fullmatch(part) and not any(prefix in part for prefix in _SECRETS)
        else "(malformed)"
        for part in path.split("/")
    )


# The gateways' validations and the health probes, answered: at DEBUG only, as gRPC
# logs none of them one by one (the metrics count them); at INFO they cost a fifth of
# an HTTP validation's time.
_QUIET = (":validateApiKey", ":batchValidate", "/healthz")


class AccessLog(AbstractAccessLogger):
    """Method, path (never the query string, and no segment that is not a name: a secret
    sent there by mistake stays out), status, duration; at INFO, as `edgekeys.calls`
    lines are, except the gateways' validations and the health probes that did not fail
    (DEBUG)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        quiet = response.status < 400 and request.path.endswith(_QUIET)
        level = logging.DEBUG if quiet else logging.INFO
        if access.isEnabledFor(level):
            fields = {
                "method": request.method,
                "path": logged_path(request.path),
                "status": response.status,
                "duration_ms": round(elapsed * 1000, 2),
            }
            access.log(level, "http", extra={"fields": fields})

    @property
    def enabled(self) -> bool:
        return access.isEnabledFor(logging.INFO)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Whatever goes wrong is a JSON error, never a traceback or an HTML page."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = error.status if error.status in (404, 405, 413, 415) else 400
        return http_error(code, error.reason)
    except Exception:
        log.exception("internal error in an HTTP request")
        return http_error(500, "internal error; see the server log")


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("x-content-type-options", "nosniff")
    return response


def application(
    transcoder: Transcoder, serving: Callable[[], bool], openapi: dict[str, Any]
) -> web.Application:
    """The application, to which other modules add their routes before it starts."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors, _headers])

    async def healthz(request: web.Request) -> web.Response:
        up = serving()
        return web.json_response(
            {"status": "SERVING" if up else "NOT_SERVING"}, status=200 if up else 503
        )

    async def document(request: web.Request) -> web.Response:
        return web.json_response(openapi)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/openapi.json", document)
    app.router.add_route("*", "/v1/{tail:.*}", transcoder.handle)
    return app


class Listener:
    """Serves an application on `host:port`, with TLS when given a context."""

    def __init__(
        self, app: web.Application, address: str, tls: ssl.SSLContext | None, grace: float
    ) -> None:
        self.app = app
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.tls = tls
        self.runner = web.AppRunner(
            app, access_log_class=AccessLog, handle_signals=False, shutdown_timeout=grace
        )

    async def start(self, reuse_port: bool) -> int:
        """Listen; returns the bound port."""
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.host, self.port, ssl_context=self.tls, reuse_port=reuse_port
        )
        try:
            await site.start()
        except OSError as error:
            await self.runner.cleanup()
            raise RuntimeError(
                f"cannot serve HTTP on {self.host}:{self.port}: {error.strerror}"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.port
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        log.info("HTTP on %s://%s:%d/", scheme, host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening; requests in flight get the grace the runner was given."""
        await self.runner.cleanup()
