"""The pages around the keys: sign in and out, projects, a project's overview and its
API keys, and Look up a secret."""

from datetime import datetime
from urllib.parse import quote

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from service.console.calls import Client, ConsoleContext, Refusal
from service.console.forms import FormError, deployment_id
from service.console.site import (
    CALLER,
    COOKIE,
    ROOT,
    clear_cookie,
    console_of,
    page_error,
    set_cookie,
)
from service.console.views import SOON, KeyView, ProjectChange, key_view, project_changes
from service.domain import names
from service.security.callers import ALL, CallerRejected, digest

OVERVIEW_LIMIT = 10_000  # keys counted on a project's overview, at most
RECENT_CHANGES = 10


def project_of(request: web.Request) -> str:
    """The project a page's URL names (a bad one is a 404, not a call)."""
    project = request.match_info["project"]
    if not names.is_project(project):
        raise page_error(404, "Not found", f"There is no project {project!r}.")
    return project


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    if not console.sign_in_needed or CALLER in request:
        raise web.HTTPSeeOther(f"{ROOT}/")
    return console.render(request, "signin.html", next=_next(request), error="")


async def sign_in(request: web.Request) -> web.StreamResponse:
    """An access token for a caller's session: the token itself is kept nowhere."""
    console = console_of(request)
    if console.gate is None or not console.sign_in_needed:
        raise web.HTTPSeeOther(f"{ROOT}/")
    posted = await request.post()
    token = str(posted.get("token", "")).strip()
    error = ""
    if not token:
        error = "Enter your access token."
    else:
        probe = ConsoleContext(request, digest(token))
        try:
            caller = console.gate.identify(probe)
        except CallerRejected as rejected:
            error = (
                str(rejected)
                if rejected.reason != "CALLER_UNAUTHENTICATED"
                else ("This access token is not one of a known caller.")
            )
        else:
            if not caller.roles & {"admin", "auditor"}:
                error = f"Caller {caller.name} has neither the admin nor the auditor role."
    if error:
        return console.render(
            request, "signin.html", 401, next=_next(request, posted.get("next")), error=error
        )
    cookie, _ = console.sessions.sign_in(request.cookies.get(COOKIE), digest(token))
    response = web.HTTPSeeOther(_next(request, posted.get("next")))
    set_cookie(request, response, cookie)
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    console.sessions.end(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther(f"{ROOT}/signin" if console.sign_in_needed else f"{ROOT}/")
    clear_cookie(response)
    raise response


def _next(request: web.Request, posted: object = None) -> str:
    """Where to go after signing in: a console page, never another site."""
    target = str(posted if posted is not None else request.query.get("next", ""))
    if target.startswith(f"{ROOT}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{ROOT}/"


async def home(request: web.Request) -> web.StreamResponse:
    """The caller's projects; one project goes straight to its overview."""
    console = console_of(request)
    caller = request.get(CALLER)
    projects = sorted(caller.projects - {ALL}) if caller else []
    everywhere = caller is not None and caller.everywhere
    if len(projects) == 1 and not everywhere:
        raise web.HTTPSeeOther(f"{ROOT}/projects/{projects[0]}")
    return console.render(request, "home.html", projects=projects, everywhere=everywhere)


async def open_project(request: web.Request) -> web.StreamResponse:
    project = request.query.get("project", "").strip()
    if not names.is_project(project):
        console = console_of(request)
        caller = request.get(CALLER)
        projects = sorted(caller.projects - {ALL}) if caller else []
        error = "Enter a project ID (such as acme) or a project number."
        return console.render(
            request, "home.html", 400, projects=projects, everywhere=True, error=error
        )
    raise web.HTTPSeeOther(f"{ROOT}/projects/{project}")


async def project_overview(request: web.Request) -> web.StreamResponse:
    """Counts, keys that expire within 7 days and, for an auditor, the latest changes."""
    console = console_of(request)
    project = project_of(request)
    caller = request[CALLER]
    client = console.client(request)
    now = console.clock()
    counts: dict[str, int] | None = None
    expiring: list[KeyView] = []
    more = False
    if "admin" in caller.roles:
        keys, more = await _all_keys(client, project)
        views = [key_view(key, now) for key in keys]
        counts = {
            "Active": sum(v.state == "Active" for v in views),
            "Expired": sum(v.state == "Expired" for v in views),
            "Deleted": sum(v.state == "Deleted" for v in views),
            "Never expire": sum(v.active and v.expire is None for v in views),
            "Inference instances": len({d for v in views if v.active for d in v.deployments}),
        }
        expiring = sorted(
            (v for v in views if v.expiring_soon), key=lambda v: v.expire.at if v.expire else now
        )
    changes: list[ProjectChange] = []
    if "auditor" in caller.roles:
        changes = await _recent_changes(client, project, now)
    return console.render(
        request,
        "project.html",
        project=project,
        counts=counts,
        more=more,
        limit=OVERVIEW_LIMIT,
        expiring=expiring,
        soon_days=SOON.days,
        changes=changes,
    )


async def _all_keys(client: Client, project: str) -> tuple[list[pb.ApiKey], bool]:
    """A project's keys, deleted ones too, up to OVERVIEW_LIMIT; and whether there are more."""
    keys: list[pb.ApiKey] = []
    token = ""
    while len(keys) < OVERVIEW_LIMIT:
        page = await client.keys(
            "ListApiKeys",
            pb.ListApiKeysRequest(
                parent=f"projects/{project}", page_size=1000, page_token=token, show_deleted=True
            ),
        )
        keys.extend(page.api_keys)
        token = page.next_page_token
        if not token:
            return keys, False
    return keys, True


async def _recent_changes(client: Client, project: str, now: datetime) -> list[ProjectChange]:
    """The project's latest changes of the last 7 days, newest first (ListEvents
    reads oldest first), from at most ten pages."""
    start = Timestamp()
    start.FromDatetime(now - SOON)
    request = apb.ListEventsRequest(parent=f"projects/{project}", page_size=1000, start_time=start)
    latest: list[apb.AuditEvent] = []
    for _ in range(10):
        page = await client.audit("ListEvents", request)
        latest = [*latest, *page.events][-RECENT_CHANGES:]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    return project_changes(latest[::-1])


async def api_keys(request: web.Request) -> web.StreamResponse:
    """The API keys page: a table, filtered by deployment, a page at a time."""
    console = console_of(request)
    project = project_of(request)
    query = request.query
    deployment = query.get("deployment", "").strip()
    show_deleted = query.get("show_deleted") == "on"
    message = pb.ListApiKeysRequest(
        parent=f"projects/{project}",
        page_size=_page_size(query.get("page_size", "")),
        page_token=query.get("page_token", ""),
        show_deleted=show_deleted,
    )
    if deployment:
        message.deployment = (
            deployment
            if deployment.startswith("projects/")
            else f"projects/{project}/deployments/{deployment}"
        )
    page = await console.client(request).keys("ListApiKeys", message)
    now = console.clock()
    filters = {"deployment": deployment, "show_deleted": "on" if show_deleted else ""}
    kept = "&".join(f"{k}={quote(v, safe='')}" for k, v in filters.items() if v)
    return console.render(
        request,
        "keys.html",
        project=project,
        keys=[key_view(key, now) for key in page.api_keys],
        deployment=deployment_id(deployment),
        show_deleted=show_deleted,
        first_page=f"?{kept}" if message.page_token else "",
        next_page=(
            f"?{kept}{'&' if kept else ''}page_token={quote(page.next_page_token, safe='')}"
            if page.next_page_token
            else ""
        ),
    )


def _page_size(text: str) -> int:
    return int(text) if text.isdigit() and 0 < int(text) <= 1000 else 50


async def lookup_page(request: web.Request) -> web.StreamResponse:
    return console_of(request).render(request, "lookup.html", key=None, error="")


async def lookup(request: web.Request) -> web.StreamResponse:
    """Which key a leaked secret is: the secret comes in the body, and the answer
    never repeats it."""
    console = console_of(request)
    posted = await request.post()
    secret = str(posted.get("secret", "")).strip()
    key, error, status = None, "", 200
    try:
        if not secret:
            raise FormError("secret", "Paste the secret to look up.")
        found = await console.client(request).keys(
            "LookupApiKey", pb.LookupApiKeyRequest(secret=secret)
        )
        key = key_view(found.api_key, console.clock())
    except FormError as form_error:
        error, status = str(form_error), 400
    except Refusal as refusal:
        if refusal.status not in (400, 404):
            raise
        error, status = refusal.fields.get("secret", refusal.message), refusal.status
    return console.render(request, "lookup.html", status, key=key, error=error)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", home)
    app.router.add_get("/signin", sign_in_page)
    app.router.add_post("/signin", sign_in)
    app.router.add_post("/signout", sign_out)
    app.router.add_get("/projects", open_project)
    app.router.add_get("/projects/{project}", project_overview)
    app.router.add_get("/projects/{project}/apiKeys", api_keys)
    app.router.add_get("/lookup", lookup_page)
    app.router.add_post("/lookup", lookup)
