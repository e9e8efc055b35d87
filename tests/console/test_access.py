"""Sign in, sessions, roles and projects: the console acts as the signed-in caller,
exactly as gRPC would; CSRF tokens on every state-changing request."""

from typing import Any

from playwright.sync_api import expect

from edgekeys.v1 import api_keys_pb2 as pb
from service.security.callers import TOKEN_PREFIX
from tests.console.conftest import Caller, Console, screenshot

Guarded = tuple[Console, dict[str, Caller]]


def make_key(console: Console, name: str = "gateway", parent: str = "projects/acme") -> pb.ApiKey:
    created: pb.CreateApiKeyResponse = console.server.keys.CreateApiKey(
        pb.CreateApiKeyRequest(
            parent=parent,
            api_key=pb.ApiKey(display_name=name, deployments=[f"{parent}/deployments/llama-3"]),
        )
    )
    return created.api_key


def key_path(key: pb.ApiKey) -> str:
    project, key_id = key.name.split("/")[1], key.name.split("/")[3]
    return f"/console/projects/{project}/apiKeys/{key_id}"


def session_cookie(page: Any) -> dict[str, Any]:
    cookies = [c for c in page.context.cookies() if c["name"] == "edgekeys_console"]
    assert len(cookies) == 1
    cookie: dict[str, Any] = cookies[0]
    return cookie


def test_sign_in_asks_for_an_access_token_and_sign_out_ends_the_session(
    guarded: Guarded,
) -> None:
    console, made = guarded
    page = console.open("/console/projects/acme/apiKeys")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(page, "sign-in")
    page.get_by_label("Access token").fill(TOKEN_PREFIX + "not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("not one of a known caller")).to_be_visible()

    page.get_by_label("Access token").fill(made["admin"].token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()  # where it was going
    cookie = session_cookie(page)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert made["admin"].token not in cookie["value"]

    replay = console.browser.new_context(base_url=console.url)
    console.contexts.append(replay)
    replay.add_cookies(
        [{"name": cookie["name"], "value": cookie["value"], "url": console.url + "/console/"}]
    )
    assert "API keys" in replay.request.get("/console/projects/acme/apiKeys").text()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Access token")).to_be_visible()
    after = replay.request.get("/console/projects/acme/apiKeys")  # the old cookie, at once
    assert "Access token" in after.text()
    assert "Sign out" not in after.text()


def test_sign_in_and_sign_out_need_the_sessions_csrf_token(guarded: Guarded) -> None:
    console, made = guarded
    page = console.open("/console/signin")
    refused = page.request.post(
        "/console/signin", form={"token": made["admin"].token, "csrf": "forged"}
    )
    assert refused.status == 403
    page = console.sign_in(made["admin"])
    refused = page.request.post("/console/signout", form={})
    assert refused.status == 403
    page.goto("/console/projects/acme/apiKeys")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()  # still signed in


def test_a_write_without_the_csrf_token_or_from_another_site_is_refused(console: Console) -> None:
    key = make_key(console)
    page = console.open(key_path(key))
    csrf = page.locator("input[name=csrf]").first.input_value()
    without = page.request.post(key_path(key) + "/general", form={"name": "changed"})
    assert without.status == 403
    other_site = page.request.post(
        key_path(key) + "/general",
        form={"name": "changed", "csrf": csrf},
        headers={"sec-fetch-site": "cross-site"},
    )
    assert other_site.status == 403
    current = console.server.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name)).api_key
    assert current.display_name == "gateway"
    with_token = page.request.post(
        key_path(key) + "/general", form={"name": "changed", "csrf": csrf, "etag": key.etag}
    )
    assert with_token.status == 200


def test_an_auditor_sees_history_but_cannot_change_anything(guarded: Guarded) -> None:
    console, made = guarded
    key = make_key(console)
    page = console.sign_in(made["auditor"], key_path(key))
    expect(page.get_by_role("heading", name="gateway", level=1)).to_be_visible()
    expect(page.get_by_role("button", name="Save")).to_be_disabled()
    expect(page.get_by_role("button", name="Rotate")).to_be_disabled()
    expect(page.get_by_role("button", name="Delete")).to_be_disabled()
    page.get_by_role("link", name="History").click()
    expect(page.get_by_role("table")).to_contain_text("portal")  # the actor, from gRPC
    screenshot(page, "auditor-history")
    csrf = page.locator("input[name=csrf]").first.input_value()
    forged = page.request.post(
        key_path(key) + "/general", form={"name": "forged", "csrf": csrf, "etag": key.etag}
    )
    assert forged.status == 403
    assert "lacks the role" in forged.text()
    deleted = page.request.post(key_path(key) + "/delete", form={"csrf": csrf})
    assert deleted.status == 403
    current = console.server.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name)).api_key
    assert current.display_name == "gateway" and current.state == pb.ApiKey.STATE_ACTIVE
    page.goto("/console/projects/acme/apiKeys")  # ListApiKeys needs the admin role
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()


def test_an_admin_only_caller_sees_no_history_tab(guarded: Guarded) -> None:
    console, made = guarded
    key = make_key(console)
    page = console.sign_in(made["admin"], key_path(key))
    expect(page.get_by_role("link", name="General")).to_be_visible()
    expect(page.get_by_role("link", name="History")).to_have_count(0)
    assert page.request.get(key_path(key) + "/history").status == 403


def test_another_projects_caller_gets_403_and_404_pages_never_500(guarded: Guarded) -> None:
    console, made = guarded
    key = make_key(console)
    page = console.sign_in(made["other"])
    for path, status in (
        (key_path(key), 403),
        (key_path(key) + "/history", 403),
        ("/console/projects/acme/apiKeys", 403),
        ("/console/projects/acme", 403),
        ("/console/projects/globex/apiKeys/no-such-key", 404),
        ("/console/projects/NOT_A_PROJECT/apiKeys", 404),
        ("/console/nothing/here", 404),
    ):
        response = page.goto(path)
        assert response is not None and response.status == status, path
    page.goto(key_path(key))
    expect(page.get_by_role("alert")).to_contain_text("may not touch project 'acme'")
    screenshot(page, "not-allowed")


def test_without_a_callers_file_no_sign_in_is_asked(console: Console) -> None:
    page = console.open("/console/")
    expect(page.get_by_label("Access token")).to_have_count(0)
    expect(page.get_by_label("Project ID")).to_be_visible()
    page.get_by_label("Project ID").fill("acme")
    page.get_by_role("button", name="Open project").click()
    expect(page.get_by_role("heading", name="Project acme")).to_be_visible()


def test_an_arrival_from_another_site_reloads_once_to_bring_the_strict_cookie(
    console: Console,
) -> None:
    fresh = console.browser.new_context(base_url=console.url)
    console.contexts.append(fresh)
    arrival = fresh.request.get(
        "/console/projects/acme/apiKeys?show_deleted=on", headers={"sec-fetch-site": "cross-site"}
    )
    assert 'url=/console/projects/acme/apiKeys?show_deleted=on&amp;arrived=1"' in arrival.text()
    assert "set-cookie" not in arrival.headers  # no new session over the one held back
    reloaded = fresh.request.get(
        "/console/projects/acme/apiKeys?show_deleted=on&arrived=1",
        headers={"sec-fetch-site": "cross-site"},
    )
    assert "API keys" in reloaded.text()  # marked: never a second bounce
