"""What every page of the console needs: its state (the wrapped methods, the callers
gate, the sessions, the templates, the clock), rendering, errors, the session cookie."""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import grpc
import jinja2
from aiohttp import web

from service.api.interceptors import Method
from service.console.calls import Client, ConsoleContext
from service.console.sessions import Session, Sessions
from service.domain.clock import Clock
from service.security.callers import ANONYMOUS, Caller, CallerRejected, Gate

ROOT = "/console"
STATIC = f"{ROOT}/static/"
COOKIE = "edgekeys_console"
HTMX = "htmx-2.0.11.min.js"  # npm htmx.org 2.0.11, dist/htmx.min.js, as published
HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
SESSION = web.RequestKey("session", Session)
CALLER = web.RequestKey("caller", Caller)
CONSOLE: web.AppKey["Console"] = web.AppKey("console")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _assets() -> dict[str, Asset]:
    """The static files, read once: served from memory, never from a path a request names."""
    found = {}
    for entry in resources.files("service.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix in _TYPES:
            body = entry.read_bytes()
            found[entry.name] = Asset(body, _TYPES[suffix], hashlib.sha256(body).hexdigest()[:16])
    return found


class Console:
    """What every page needs: the wrapped methods, the callers gate (None: no callers,
    everyone is anonymous), the sessions, the templates and the clock."""

    def __init__(self, methods: Mapping[str, Method], gate: Gate | None, clock: Clock) -> None:
        self.methods = methods
        self.gate = gate
        self.clock = clock
        self.sessions = Sessions(clock)
        self.sign_in_needed = gate is not None and gate.path is not None
        self.assets = _assets()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("service.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals["static"] = self.static_url
        self.templates.globals["root"] = ROOT
        self.templates.globals["htmx"] = HTMX

    def static_url(self, name: str) -> str:
        return f"{STATIC}{name}?v={self.assets[name].etag}"

    def render(
        self, request: web.Request, template: str, status: int = 200, **values: Any
    ) -> web.Response:
        session = request.get(SESSION)
        caller: Caller | None = request.get(CALLER)
        page = self.templates.get_template(template).render(
            csrf=session.csrf if session else "",
            notice=session.pop_notice() if session else "",
            caller=caller,
            signed_in=caller is not None and self.sign_in_needed,
            may_write=caller is not None and "admin" in caller.roles,
            may_audit=caller is not None and "auditor" in caller.roles,
            path=request.path,
            **values,
        )
        return web.Response(status=status, text=page, content_type="text/html")

    def client(self, request: web.Request) -> Client:
        session = request[SESSION]
        return Client(self.methods, request, session.token_digest)

    def caller_of(self, request: web.Request, session: Session) -> Caller | None:
        """The caller a request acts as: the signed-in one, or the TLS client
        certificate's; anonymous without a callers file; None if not signed in."""
        if self.gate is None:
            return ANONYMOUS
        context = ConsoleContext(request, session.token_digest)
        if session.token_digest is None and not context.auth_context():
            return None
        try:
            return self.gate.identify(context)
        except CallerRejected as rejected:
            if rejected.code != grpc.StatusCode.UNAUTHENTICATED:
                raise
            session.token_digest = None  # the caller left the callers file
            return None


def page_error(status: int, title: str, message: str) -> web.HTTPException:
    """Raised by a page: the error page (or, for htmx, an alert in place)."""
    error = web.HTTPException(reason=title, text=message)
    error.set_status(status, title)
    return error


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


def htmx(request: web.Request) -> bool:
    """A request htmx sent: it gets a partial, to swap in place."""
    return request.headers.get("hx-request") == "true"


def set_cookie(request: web.Request, response: web.StreamResponse, cookie: str) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        path=ROOT,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )  # no Max-Age: the server ends it after 12 h idle, the browser when it closes


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=ROOT)
