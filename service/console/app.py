"""The console's aiohttp application, mounted at /console/ on the HTTP listener.

Every response carries a strict Content-Security-Policy (`default-src 'self'`: no
inline script or style, nothing from elsewhere), X-Frame-Options DENY, Referrer-Policy
no-referrer and, for pages, Cache-Control no-store (a page may hold a secret or a
key's details: Back never brings one back from a cache). Every state-changing request
carries the session's CSRF token (sign-in and sign-out included) and is refused
without it; a request that a browser marks as from another site is refused too.
"""

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import quote

import grpc
from aiohttp import web
from aiohttp.typedefs import Middleware

from service.api.interceptors import Method
from service.console import key_pages, pages
from service.console.calls import KEYS, Refusal
from service.console.site import (
    CALLER,
    CONSOLE,
    COOKIE,
    ROOT,
    SESSION,
    STATIC,
    Console,
    htmx,
    page_error,
    set_cookie,
)
from service.domain.clock import Clock
from service.security.callers import CallerRejected, Gate

CSP = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'"
)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_ARRIVED = "arrived"  # marks the same-site reload of an arrival from another site
_OPEN = frozenset({f"{ROOT}/signin"})  # reachable without signing in
log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    headers = response.headers
    headers["content-security-policy"] = CSP
    headers["x-frame-options"] = "DENY"
    headers["referrer-policy"] = "no-referrer"
    headers["x-content-type-options"] = "nosniff"
    headers["cross-origin-opener-policy"] = "same-origin"
    headers.setdefault("cache-control", "no-store")
    headers["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


_TITLES = {
    400: "Bad request",
    401: "Sign in again",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    409: "Changed meanwhile",
    413: "Too large",
    429: "Too many requests",
    500: "Server error",
    503: "Unavailable",
}


def _errors(console: Console) -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure is a page (for htmx, an alert where the answer goes), with
        its own status: a refusal of the service's is never a 500."""
        try:
            return await handler(request)
        except Refusal as refusal:
            title = _TITLES.get(refusal.status, "Error")
            return _error_page(console, request, refusal.status, title, refusal.message)
        except CallerRejected as rejected:  # the gate, met by a page before any call
            status = 429 if rejected.code == grpc.StatusCode.RESOURCE_EXHAUSTED else 403
            return _error_page(console, request, status, _TITLES[status], str(rejected))
        except web.HTTPException as error:
            if error.status < 400:
                raise
            title = _TITLES.get(error.status, error.reason)
            return _error_page(console, request, error.status, title, error.text or "")
        except Exception:
            log.exception("internal error in a console page")
            message = "Something went wrong on the server; its log says what."
            return _error_page(console, request, 500, _TITLES[500], message)

    return errors


def _error_page(
    console: Console, request: web.Request, status: int, title: str, message: str
) -> web.Response:
    template = "partials/alert.html" if htmx(request) else "error.html"
    return console.render(request, template, status, title=title, message=message)


def _sessions(console: Console) -> Middleware:
    @web.middleware
    async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Find the session (or start one), check the CSRF token of a state-changing
        request, find the caller; send who is not signed in to Sign in."""
        if request.path.startswith(STATIC):
            return await handler(request)
        cookie = request.cookies.get(COOKIE)
        session = console.sessions.get(cookie)
        started = None
        if session is None:
            if cookie is None and _arrives_from_another_site(request):
                # The browser held the SameSite=Strict cookie back: a reload from this
                # site brings it, where a new session would have replaced it (once:
                # the reload is marked, so it can never loop).
                query = request.query_string
                target = f"{request.path}?{query}{'&' if query else ''}{_ARRIVED}=1"
                return console.render(request, "bounce.html", target=target)
            started, session = console.sessions.start()
        request[SESSION] = session
        if request.method not in _SAFE:
            await _check_csrf(request, session.csrf)
        caller = console.caller_of(request, session)
        if caller is not None:
            request[CALLER] = caller
        if caller is None and console.sign_in_needed and request.path not in _OPEN:
            response: web.StreamResponse = _to_sign_in(request)
        else:
            response = await handler(request)
        if started is not None and COOKIE not in response.cookies:
            set_cookie(request, response, started)
        return response

    return sessions


def _arrives_from_another_site(request: web.Request) -> bool:
    return (
        request.method == "GET"
        and request.headers.get("sec-fetch-site") == "cross-site"
        and _ARRIVED not in request.query
    )


async def _check_csrf(request: web.Request, expected: str) -> None:
    """The session's token, in the form's `csrf` field or the `x-csrf-token` header;
    and nothing a browser marks as sent from another site. (Origin is not checked:
    under Referrer-Policy no-referrer Chromium sends `Origin: null` on a page's own
    form posts.) aiohttp keeps the parsed form for the handler."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise page_error(403, "Not allowed", "A request from another site was refused.")
    posted = await request.post()
    sent = request.headers.get("x-csrf-token") or posted.get("csrf", "")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise page_error(
            403,
            "Not allowed",
            "This form has expired or did not come from this console: reload the page "
            "and try again.",
        )


def _to_sign_in(request: web.Request) -> web.StreamResponse:
    target = f"{ROOT}/signin"
    if request.method == "GET" and request.path != f"{ROOT}/":
        target += "?next=" + quote(request.path_qs, safe="")
    if htmx(request):
        return web.Response(status=401, headers={"hx-redirect": target})
    raise web.HTTPSeeOther(target)


async def _static(request: web.Request) -> web.StreamResponse:
    asset = request.app[CONSOLE].assets.get(request.match_info["name"])
    if asset is None:
        raise page_error(404, "Not found", "No such file.")
    etag = f'"{asset.etag}"'
    headers = {"etag": etag, "cache-control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, headers=headers)


def application(methods: Mapping[str, Method], gate: Gate | None, clock: Clock) -> web.Application:
    console = Console(methods, gate, clock)
    app = web.Application(middlewares=[_headers, _errors(console), _sessions(console)])
    app[CONSOLE] = console
    app.router.add_get("/static/{name}", _static)
    pages.add_routes(app)
    key_pages.add_routes(app)
    return app


def mount(
    app: web.Application,
    methods: Mapping[str, Method],
    gate: Gate | None,
    clock: Clock,
    workers: int = 1,
) -> None:
    """Serve the console at /console/ (and send / there), if this server manages keys
    and is its only worker: its sessions live in one process's memory."""
    if KEYS + "GetApiKey" not in methods:
        return  # an edge follower: no keys to manage here
    if workers > 1:
        log.warning(
            "the console is off with --workers %d: its sessions are held in one process's "
            "memory, and a browser's requests would reach any worker",
            workers,
        )
        return

    async def to_console(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{ROOT}/")

    app.router.add_get("/", to_console)
    app.router.add_get(ROOT, to_console)
    app.add_subapp(ROOT, application(methods, gate, clock))
