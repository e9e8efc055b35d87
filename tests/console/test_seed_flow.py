"""The product page's own steps, in a real browser, checked through gRPC: create with
two instances and a date, copy, OK; edit each tab; rotate; history; delete."""

import re
from datetime import UTC, datetime

from playwright.sync_api import Page, expect

from edgekeys.v1 import api_keys_pb2 as pb
from edgekeys.v1 import validation_pb2 as vpb
from tests.console.conftest import Console, screenshot

ACME = "projects/acme"
LLAMA = f"{ACME}/deployments/llama-3"
MISTRAL = f"{ACME}/deployments/mistral"
QWEN = f"{ACME}/deployments/qwen"


def verdict(console: Console, secret: str, deployment: str) -> int:
    request = vpb.ValidateApiKeyRequest(secret=secret, deployment=deployment)
    return int(console.server.validation.ValidateApiKey(request).verdict)


def only_key(console: Console) -> pb.ApiKey:
    keys = console.server.keys.ListApiKeys(pb.ListApiKeysRequest(parent=ACME)).api_keys
    assert len(keys) == 1
    key: pb.ApiKey = keys[0]
    return key


def secret_is_gone(page: Page, secret: str) -> None:
    assert secret not in page.content()
    state = page.evaluate(
        "() => JSON.stringify([history.state, {...localStorage}, {...sessionStorage}])"
    )
    assert secret not in state


def test_the_seed_flow_from_create_to_delete(console: Console) -> None:
    # UTC+14: a local-midnight bug would move the date a day back.
    page = console.open("/console/projects/acme/apiKeys", tz="Pacific/Kiritimati")
    screenshot(page, "api-keys-empty")
    page.get_by_role("link", name="Create API key").first.click()
    page.get_by_label("Name", exact=True).fill("Production gateway")
    page.get_by_label("Description", exact=True).fill("for the chat front end")
    page.get_by_label("Inference instances", exact=True).fill("llama-3, mistral")
    page.get_by_label("Inference instances", exact=True).press("Tab")  # leaving it selects both
    expect(page.get_by_role("button", name="Remove llama-3")).to_be_visible()
    expect(page.get_by_role("button", name="Remove mistral")).to_be_visible()
    page.get_by_label("Set an expiration date").check()
    page.get_by_label("Expiration date", exact=True).fill("2030-03-10")
    expect(page.get_by_text("00:00 UTC on this date")).to_be_visible()
    screenshot(page, "create")
    page.get_by_role("button", name="Create", exact=True).click()

    secret_field = page.get_by_label("API key", exact=True)
    expect(secret_field).to_have_value(re.compile(r"^edk_[0-9A-Za-z]{49}$"))
    secret = secret_field.input_value()
    expect(page.get_by_text("Never share your API key with third parties")).to_be_visible()
    screenshot(page, "secret-once")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret

    created = only_key(console)
    assert created.display_name == "Production gateway"
    assert list(created.deployments) == [LLAMA, MISTRAL]
    assert created.expire_time.ToDatetime(tzinfo=UTC) == datetime(2030, 3, 10, tzinfo=UTC)
    assert verdict(console, secret, LLAMA) == vpb.VERDICT_ALLOWED
    assert verdict(console, secret, MISTRAL) == vpb.VERDICT_ALLOWED

    page.get_by_role("button", name="OK, I’ve copied API Key").click()
    page.wait_for_url(f"**/console/projects/acme/apiKeys/{created.name.rsplit('/', 1)[1]}")
    secret_is_gone(page, secret)
    page.reload()
    secret_is_gone(page, secret)
    page.go_back()
    secret_is_gone(page, secret)
    page.go_forward()

    # Edit: General
    key_page = page.url
    expect(page.get_by_role("heading", name="Production gateway")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("Chat gateway")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    expect(page.get_by_role("heading", name="Chat gateway", level=1)).to_be_visible()
    assert only_key(console).display_name == "Chat gateway"
    screenshot(page, "key-general")

    # Edit: Inference instances (keyboard: the tab is a link)
    page.get_by_role("link", name="Inference instances").click()
    page.get_by_role("button", name="Remove mistral").click()
    page.get_by_label("Inference instances", exact=True).fill("qwen")
    page.get_by_label("Inference instances", exact=True).press("Enter")
    expect(page.get_by_role("button", name="Remove qwen")).to_be_visible()
    screenshot(page, "key-instances")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    assert list(only_key(console).deployments) == [LLAMA, QWEN]
    assert verdict(console, secret, MISTRAL) == vpb.VERDICT_DEPLOYMENT_NOT_ALLOWED

    # Edit: Expiration
    page.get_by_role("link", name="Expiration").click()
    page.get_by_label("Never expire").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    assert not only_key(console).HasField("expire_time")
    screenshot(page, "key-expiration")

    # Rotate, with a grace period
    page.goto(key_page)
    page.get_by_role("button", name="Rotate").click()
    grace = page.get_by_label("Grace period")
    assert grace.locator("option").first.inner_text() == "None"
    grace.select_option(label="1 hour")
    screenshot(page, "rotate")
    page.get_by_role("dialog").get_by_role("button", name="Rotate").click()
    rotated_field = page.get_by_label("API key", exact=True)
    expect(rotated_field).to_be_visible()
    rotated = rotated_field.input_value()
    assert rotated != secret
    assert verdict(console, rotated, LLAMA) == vpb.VERDICT_ALLOWED
    assert verdict(console, secret, LLAMA) == vpb.VERDICT_ALLOWED  # the grace period
    page.get_by_role("button", name="OK, I’ve copied API Key").click()
    page.wait_for_load_state()
    secret_is_gone(page, rotated)

    # History: every change, with old and new values
    page.get_by_role("link", name="History").click()
    history = page.get_by_role("table")
    expect(history).to_contain_text("Production gateway")
    expect(history).to_contain_text("Chat gateway")
    expect(history).to_contain_text("Inference instance detached")
    expect(history).to_contain_text("mistral")
    expect(history).to_contain_text("Expiration changed")
    expect(history).to_contain_text("Secret rotated")
    expect(history).to_contain_text("anonymous")
    screenshot(page, "key-history")
    page.get_by_role("link", name="State after change 1").click()
    expect(page.get_by_role("heading", name="The key after change 1")).to_be_visible()
    expect(page.locator(".revision")).to_contain_text("Production gateway")

    # Delete, from the list's Key actions menu
    page.get_by_role("navigation", name="Console").get_by_role("link", name="API keys").click()
    screenshot(page, "api-keys")
    page.get_by_role("button", name="Key actions").click()
    page.get_by_role("button", name="Delete", exact=True).click()
    screenshot(page, "delete")
    page.get_by_role("button", name="Delete API key").click()
    expect(page.get_by_text("API key Chat gateway deleted.")).to_be_visible()
    expect(page.get_by_role("link", name="Chat gateway")).to_have_count(0)
    deleted = console.server.keys.GetApiKey(pb.GetApiKeyRequest(name=created.name)).api_key
    assert deleted.state == pb.ApiKey.STATE_DELETED
    assert verdict(console, rotated, LLAMA) == vpb.VERDICT_NOT_FOUND
    page.get_by_label("Show deleted").check()
    expect(page.get_by_role("link", name="Chat gateway")).to_be_visible()
    expect(page.get_by_text("Deleted", exact=True)).to_be_visible()
