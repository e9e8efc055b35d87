"""One key's pages: Create API key, the key overview with its tabs (General,
Inference instances, Expiration, History), Rotate and Delete. Each write carries the
etag of the key as the page showed it: a change made elsewhere meanwhile is reported,
and the form shows the key as it now is."""

from typing import Any

import grpc
from aiohttp import web
from google.protobuf.field_mask_pb2 import FieldMask

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import audit_pb2 as apb
from service.console import forms
from service.console.calls import Client, Refusal
from service.console.forms import GRACE_PERIODS, FormError
from service.console.pages import project_of
from service.console.site import CALLER, ROOT, SESSION, console_of, htmx, page_error
from service.console.views import history, key_view
from service.domain import names

TABS = (
    ("general", "General"),
    ("instances", "Inference instances"),
    ("expiration", "Expiration"),
    ("history", "History"),
)
CONFLICT = (
    "This API key was changed since you opened it. The form now shows its current "
    "values: make your change again and Save."
)


def _key_name(request: web.Request) -> str:
    project = project_of(request)
    key_id = request.match_info["key"]
    if not names.is_id(key_id):
        raise page_error(404, "Not found", f"There is no API key {key_id!r}.")
    return f"projects/{project}/apiKeys/{key_id}"


async def _known_deployments(client: Client, project: str) -> list[str]:
    """Suggestions for Inference instances: what the project's keys are attached to
    (from the first page of its keys)."""
    try:
        page = await client.keys(
            "ListApiKeys", pb.ListApiKeysRequest(parent=f"projects/{project}", page_size=1000)
        )
    except Refusal:
        return []
    return sorted({forms.deployment_id(d) for key in page.api_keys for d in key.deployments})


async def create_page(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    project = project_of(request)
    known = await _known_deployments(console.client(request), project)
    return console.render(request, "create.html", project=project, known=known, **_blank())


def _blank(**values: Any) -> dict[str, Any]:
    form = {"name": "", "description": "", "instances": [], "expiration": "never", "date": ""}
    return {"form": {**form, **values}, "errors": {}}


async def create(request: web.Request) -> web.StreamResponse:
    """Create: the secret, once, in place of the form (never in a URL or a page that a
    reload fetches again); or the form with each error beside its control."""
    console = console_of(request)
    project = project_of(request)
    posted = await request.post()
    values = _typed(posted, project)
    spec = pb.ApiKey(
        display_name=values["name"],
        description=values["description"],
        deployments=forms.deployment_names(posted, project),
    )
    errors: dict[str, str] = {}
    try:
        expire = forms.expiry(posted)
        if expire is not None:
            spec.expire_time.CopyFrom(expire)
        created = await console.client(request).keys(
            "CreateApiKey", pb.CreateApiKeyRequest(parent=f"projects/{project}", api_key=spec)
        )
    except FormError as error:
        errors, status = {error.control: str(error)}, 400
    except Refusal as refusal:
        errors, status = _errors_of(refusal)
    else:
        key = key_view(created.api_key, console.clock())
        return console.render(
            request,
            "partials/secret.html",
            project=project,
            key=key,
            secret=created.secret,
            done=f"{ROOT}/projects/{project}/apiKeys/{key.id}",
            rotated=False,
        )
    return console.render(
        request,
        "partials/create_form.html" if htmx(request) else "create.html",
        status,
        project=project,
        known=[],
        form=values,
        errors=errors,
    )


def _errors_of(refusal: Refusal) -> tuple[dict[str, str], int]:
    """A refusal's messages by control; one that names no control of the form is
    shown above it (`form`)."""
    by_control = forms.controls(refusal.fields)
    if not by_control:
        if refusal.status in (401, 403, 429, 503):
            raise refusal
        by_control = {"form": refusal.message}
    return by_control, refusal.status


async def _key(request: web.Request, client: Client, name: str) -> pb.ApiKey:
    """The key as it is: GetApiKey for an admin; for an auditor (who may not call it),
    the revision its latest event made."""
    caller = request[CALLER]
    if "admin" in caller.roles or "auditor" not in caller.roles:
        found: pb.GetApiKeyResponse = await client.keys("GetApiKey", pb.GetApiKeyRequest(name=name))
        return found.api_key
    events = await _events(client, name)
    last = events[-1].version if events else 1
    revision = apb.GetApiKeyRevisionRequest(name=name, version=last)
    as_it_is: apb.GetApiKeyRevisionResponse = await client.audit("GetApiKeyRevision", revision)
    return as_it_is.api_key


async def _events(client: Client, name: str) -> list[apb.AuditEvent]:
    events: list[apb.AuditEvent] = []
    request = apb.ListApiKeyEventsRequest(name=name, page_size=1000)
    while True:
        page = await client.audit("ListApiKeyEvents", request)
        events.extend(page.events)
        if not page.next_page_token:
            return events
        request.page_token = page.next_page_token


async def key_page(request: web.Request) -> web.StreamResponse:
    """The key overview: its summary, the tab the URL names, Rotate and Delete."""
    console = console_of(request)
    name = _key_name(request)
    tab = request.match_info.get("tab", "general")
    if tab not in dict(TABS):
        raise page_error(404, "Not found", f"There is no tab {tab!r}.")
    client = console.client(request)
    key = await _key(request, client, name)
    values: dict[str, Any] = {}
    if tab == "history":
        values = await _history(request, client, name)
    elif tab == "instances":
        values["known"] = await _known_deployments(client, project_of(request))
    view = key_view(key, console.clock())
    return console.render(
        request,
        "key.html",
        project=project_of(request),
        key=view,
        tab=tab,
        tabs=TABS,
        grace_periods=GRACE_PERIODS,
        message="",
        conflict=False,
        **_tab_form(view),
        **values,
    )


def _tab_form(key: Any, **values: Any) -> dict[str, Any]:
    return _blank(
        name=key.display_name,
        description=key.description,
        instances=key.deployments,
        expiration="date" if key.expire else "never",
        date=key.expire.date if key.expire else "",
        **values,
    )


async def _history(request: web.Request, client: Client, name: str) -> dict[str, Any]:
    """Every event of the key, newest first, and the key as of a moment or a version."""
    events = await _events(client, name)
    revision: pb.ApiKey | None = None
    as_of = request.query.get("as_of", "")
    version = request.query.get("version", "")
    error = ""
    try:
        if as_of:
            moment = forms.moment(as_of, "as_of")
            found = await client.audit(
                "GetApiKeyRevision", apb.GetApiKeyRevisionRequest(name=name, as_of_time=moment)
            )
            revision = found.api_key
        elif version.isdigit():
            found = await client.audit(
                "GetApiKeyRevision", apb.GetApiKeyRevisionRequest(name=name, version=int(version))
            )
            revision = found.api_key
    except FormError as form_error:
        error = str(form_error)
    except Refusal as refusal:
        if refusal.status not in (400, 404):
            raise
        error = refusal.message
    now = console_of(request).clock()
    return {
        "events": history(events)[::-1],
        "revision": key_view(revision, now) if revision is not None else None,
        "as_of": as_of,
        "version": version,
        "history_error": error,
    }


async def save(request: web.Request) -> web.StreamResponse:
    """Save one tab (General, Inference instances or Expiration), guarded by the etag
    the form was opened with; the answer is the tab's form again, as the key now is,
    or as it was typed with each error beside its control."""
    console = console_of(request)
    name = _key_name(request)
    project = project_of(request)
    tab = request.match_info["tab"]
    posted = await request.post()
    client = console.client(request)
    message, conflict, errors, status = "", False, {}, 200
    typed: dict[str, Any] | None = None
    try:
        saved = await _save(client, tab, name, str(posted.get("etag", "")), posted)
        message = "Saved." if saved else "Nothing to save: no change was made."
    except FormError as error:
        errors, status, typed = {error.control: str(error)}, 400, _typed(posted, project)
    except Refusal as refusal:
        if refusal.reason == "ETAG_MISMATCH":
            conflict, message, status = True, CONFLICT, 409
        else:
            (errors, status), typed = _errors_of(refusal), _typed(posted, project)
    view = key_view(await _key(request, client, name), console.clock())
    values = _tab_form(view)
    if typed is not None:
        values["form"] = typed
    known = await _known_deployments(client, project) if tab == "instances" else []
    return console.render(
        request,
        f"partials/{tab}.html",
        status,
        project=project,
        key=view,
        message=message,
        conflict=conflict,
        known=known,
        form=values["form"],
        errors=errors,
    )


def _typed(posted: forms.Posted, project: str) -> dict[str, Any]:
    """A key's form as it was posted."""
    return {
        "name": str(posted.get("name", "")),
        "description": str(posted.get("description", "")),
        "instances": forms.deployment_ids(forms.deployment_names(posted, project)),
        "expiration": str(posted.get("expiration", "never")),
        "date": str(posted.get("expire_date", "")),
    }


async def _save(
    client: Client, tab: str, name: str, etag: str, posted: forms.Posted
) -> pb.ApiKey | None:
    """The calls a tab's Save makes; None when it changes nothing."""
    if tab == "general":
        update = pb.UpdateApiKeyRequest(
            api_key=pb.ApiKey(
                name=name,
                display_name=str(posted.get("name", "")),
                description=str(posted.get("description", "")),
                etag=etag,
            ),
            update_mask=FieldMask(paths=["display_name", "description"]),
        )
        updated: pb.UpdateApiKeyResponse = await client.keys("UpdateApiKey", update)
        return updated.api_key
    if tab == "expiration":
        spec = pb.ApiKey(name=name, etag=etag)
        expire = forms.expiry(posted)
        if expire is not None:
            spec.expire_time.CopyFrom(expire)
        update = pb.UpdateApiKeyRequest(api_key=spec, update_mask=FieldMask(paths=["expire_time"]))
        updated = await client.keys("UpdateApiKey", update)
        return updated.api_key
    return await _save_instances(client, name, etag, posted)


async def _save_instances(
    client: Client, name: str, etag: str, posted: forms.Posted
) -> pb.ApiKey | None:
    """Attach what was added, detach what was removed: one call each, each with the
    etag the one before it returned, the first with the form's."""
    wanted = forms.deployment_names(posted, name.split("/")[1])
    current = (await client.keys("GetApiKey", pb.GetApiKeyRequest(name=name))).api_key
    if etag and current.etag != etag:
        raise Refusal(409, grpc.StatusCode.ABORTED, "ETAG_MISMATCH", CONFLICT)
    key: pb.ApiKey | None = None
    for deployment in [d for d in current.deployments if d not in wanted]:
        detach = pb.DetachDeploymentRequest(name=name, deployment=deployment, etag=etag)
        key = (await client.keys("DetachDeployment", detach)).api_key
        etag = key.etag
    for deployment in [d for d in wanted if d not in current.deployments]:
        attach = pb.AttachDeploymentRequest(name=name, deployment=deployment, etag=etag)
        key = (await client.keys("AttachDeployment", attach)).api_key
        etag = key.etag
    return key


async def rotate(request: web.Request) -> web.StreamResponse:
    """A new secret, shown once as after Create; the old one works for the grace period."""
    console = console_of(request)
    name = _key_name(request)
    posted = await request.post()
    try:
        rotation = pb.RotateApiKeyRequest(
            name=name, grace_period=forms.grace_period(posted), etag=str(posted.get("etag", ""))
        )
        rotated = await console.client(request).keys("RotateApiKey", rotation)
    except FormError as error:
        raise page_error(400, "Bad request", str(error)) from None
    except Refusal as refusal:
        if refusal.reason != "ETAG_MISMATCH":
            raise
        raise page_error(409, "Changed meanwhile", CONFLICT) from None
    key = key_view(rotated.api_key, console.clock())
    return console.render(
        request,
        "partials/secret.html",
        project=project_of(request),
        key=key,
        secret=rotated.secret,
        done=f"{ROOT}/projects/{project_of(request)}/apiKeys/{key.id}",
        rotated=True,
    )


async def delete(request: web.Request) -> web.StreamResponse:
    """Delete, confirmed in its dialog: back to the API keys page, without the key."""
    console = console_of(request)
    name = _key_name(request)
    posted = await request.post()
    deletion = pb.DeleteApiKeyRequest(name=name, etag=str(posted.get("etag", "")))
    try:
        deleted = await console.client(request).keys("DeleteApiKey", deletion)
    except Refusal as refusal:
        if refusal.reason != "ETAG_MISMATCH":
            raise
        raise page_error(409, "Changed meanwhile", CONFLICT.split(" The form")[0]) from None
    request[SESSION].notice = f"API key {deleted.api_key.display_name} deleted."
    raise web.HTTPSeeOther(f"{ROOT}/projects/{project_of(request)}/apiKeys")


def add_routes(app: web.Application) -> None:
    keys = "/projects/{project}/apiKeys"
    app.router.add_get(keys + "/new", create_page)
    app.router.add_post(keys + "/new", create)
    app.router.add_get(keys + "/{key}", key_page)
    app.router.add_get(keys + "/{key}/{tab}", key_page)
    app.router.add_post(keys + "/{key}/{tab:general|instances|expiration}", save)
    app.router.add_post(keys + "/{key}/rotate", rotate)
    app.router.add_post(keys + "/{key}/delete", delete)
