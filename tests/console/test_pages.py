"""Safe by construction, readable at 390 px, and the pages beyond the seed's: escaping,
security headers, the secret never cached, a concurrent change, Look up a secret, the
project overview, times in UTC with the local time beside them."""

import hashlib
import re
from datetime import timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.sync_api import Page, expect

from edgekeys.v1 import api_keys_pb2 as pb
from service.console import site
from service.domain import keyformat
from tests.conftest import START, FakeClock
from tests.console.conftest import NARROW, Console, screenshot
from tests.console.test_access import key_path, make_key

XSS = "<img src=x onerror=alert(1)>"


def test_the_vendored_htmx_is_the_pinned_release() -> None:
    shipped = site.Console({}, None, lambda: START).assets[site.HTMX].body
    assert hashlib.sha256(shipped).hexdigest() == site.HTMX_SHA256


def test_a_key_named_like_markup_shows_as_text(console: Console) -> None:
    key = make_key(console, XSS)
    dialogs: list[str] = []
    page = console.open("/console/projects/acme/apiKeys")
    page.on("dialog", lambda d: dialogs.append(d.message))
    expect(page.get_by_role("link", name=XSS)).to_be_visible()
    page.goto(key_path(key))
    expect(page.get_by_role("heading", name=XSS)).to_be_visible()
    page.get_by_role("link", name="History").click()
    assert page.locator("img").count() == 0
    assert dialogs == []


def test_every_page_has_the_security_headers_and_none_is_cached(console: Console) -> None:
    key = make_key(console)
    page = console.open("/console/")
    for path in ("/console/", key_path(key), "/console/static/console.js", "/console/nowhere"):
        headers = page.request.get(path).headers
        assert headers["content-security-policy"].startswith("default-src 'self'"), path
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-content-type-options"] == "nosniff"
        if "/static/" not in path:
            assert headers["cache-control"] == "no-store", path


def test_a_shown_secret_is_never_cached_and_never_in_a_url(console: Console) -> None:
    key = make_key(console)
    page = console.open(key_path(key))
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    page.get_by_role("button", name="Rotate").click()
    with page.expect_response(re.compile(r"/rotate$")) as answered:
        page.get_by_role("dialog").get_by_role("button", name="Rotate").click()
    response = answered.value
    assert response.headers["cache-control"] == "no-store"
    secret = page.get_by_label("API key", exact=True).input_value()
    assert secret.startswith("edk_") and secret in response.text()
    assert not any(secret in url for url in seen)


def test_look_up_a_secret_sends_it_in_the_body_and_never_shows_it_back(console: Console) -> None:
    created = console.server.create(display_name="leaky", parent="projects/acme")
    page = console.open("/console/lookup")
    page.get_by_label("Secret", exact=True).fill(created.secret)
    with page.expect_request(re.compile(r"/console/lookup$")) as sent:
        page.get_by_role("button", name="Look up").click()
    assert sent.value.method == "POST" and created.secret not in sent.value.url
    assert created.secret in (sent.value.post_data or "")
    expect(page.get_by_role("heading", name="This secret belongs to leaky")).to_be_visible()
    assert created.secret not in page.content()
    screenshot(page, "lookup")
    page.get_by_label("Secret", exact=True).fill(keyformat.new_secret())  # no key's
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_text("no key of the projects you may touch")).to_be_visible()


def test_a_change_made_elsewhere_meanwhile_is_reported_and_the_form_reloads(
    console: Console,
) -> None:
    key = make_key(console)
    page = console.open(key_path(key))
    console.server.keys.UpdateApiKey(
        pb.UpdateApiKeyRequest(api_key=pb.ApiKey(name=key.name, display_name="renamed by CI"))
    )
    page.get_by_label("Name", exact=True).fill("mine")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("changed since you opened it")
    expect(page.get_by_label("Name", exact=True)).to_have_value("renamed by CI")
    current = console.server.keys.GetApiKey(pb.GetApiKeyRequest(name=key.name)).api_key
    assert current.display_name == "renamed by CI"
    page.get_by_label("Name", exact=True).fill("mine")  # the form now has the new etag
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved.")).to_be_visible()


def test_errors_from_the_server_appear_beside_their_field(console: Console) -> None:
    page = console.open("/console/projects/acme/apiKeys/new")
    page.get_by_label("Name", exact=True).fill("   ")
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#name-error")).to_contain_text("not blank")
    expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Name", exact=True).fill("ok")
    page.get_by_label("Inference instances", exact=True).fill("Not_An_ID")
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#instances-error")).to_be_visible()
    page.get_by_role("button", name="Remove Not_An_ID").click()
    page.get_by_label("Set an expiration date").check()
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#expiration-error")).to_contain_text("Choose an expiration date")


def test_the_project_overview_counts_keys_and_lists_those_expiring_within_7_days(
    console: Console, clock: FakeClock
) -> None:
    soon = Timestamp()
    soon.FromDatetime(clock.now + timedelta(days=3))
    console.server.create(display_name="expires soon", expire_time=soon)
    console.server.create(display_name="forever")
    gone = console.server.create(display_name="gone").api_key
    console.server.keys.DeleteApiKey(pb.DeleteApiKeyRequest(name=gone.name))
    page = console.open("/console/projects/acme")
    counts = page.locator(".counts")
    expect(counts.locator("div", has_text="Active")).to_contain_text("2")
    expect(counts.locator("div", has_text="Deleted")).to_contain_text("1")
    expect(counts.locator("div", has_text="Never expire")).to_contain_text("1")
    soon_list = page.get_by_role("region", name="Expiring within 7 days")
    expect(soon_list.get_by_role("link", name="expires soon")).to_be_visible()
    expect(soon_list.get_by_role("link", name="forever")).to_have_count(0)
    screenshot(page, "project")


def test_times_are_in_utc_with_the_local_time_beside_them(console: Console) -> None:
    key = make_key(console)
    page = console.open(key_path(key), tz="Asia/Kolkata")
    created = page.locator(".summary time").first
    expect(created).to_have_text("2030-01-01 00:00 UTC")
    expect(page.locator(".summary .local").first).to_contain_text("05:30")


def fits(page: Page) -> None:
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], f"{page.url}: {widths[0]} px wide at {widths[1]} px"


@pytest.mark.parametrize("width", [NARROW])
def test_every_page_fits_390_css_pixels(console: Console, width: dict[str, int]) -> None:
    for n in range(3):
        console.server.create(
            display_name=f"a long key name number {n} for the table",
            deployments=tuple(f"projects/acme/deployments/model-number-{i}" for i in range(4)),
        )
    key = make_key(console, "narrow")
    page = console.open("/console/projects/acme/apiKeys", viewport=width)
    for path, name in (
        ("/console/", "home"),
        ("/console/projects/acme", "project"),
        ("/console/projects/acme/apiKeys", "api-keys"),
        ("/console/projects/acme/apiKeys/new", "create"),
        (key_path(key), "key-general"),
        (key_path(key) + "/instances", "key-instances"),
        (key_path(key) + "/expiration", "key-expiration"),
        (key_path(key) + "/history", "key-history"),
        ("/console/lookup", "lookup"),
    ):
        page.goto(path)
        fits(page)
        screenshot(page, f"390-{name}")
    page.goto(key_path(key))
    page.get_by_role("button", name="Rotate").click()
    fits(page)
    screenshot(page, "390-rotate")


def test_the_key_actions_menu_works_from_the_keyboard(console: Console) -> None:
    make_key(console, "keyboard")
    page = console.open("/console/projects/acme/apiKeys")
    menu_button = page.get_by_role("button", name="Key actions")
    menu_button.focus()
    page.keyboard.press("Enter")
    expect(menu_button).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_role("link", name="Edit")).to_be_focused()
    page.keyboard.press("Escape")
    expect(menu_button).to_be_focused()
    expect(page.get_by_role("link", name="Edit")).to_be_hidden()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Delete", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("dialog")).to_be_hidden()
