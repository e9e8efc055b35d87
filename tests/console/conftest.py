"""The console in a real browser: Debian's chromium, driven by Playwright (no browser
download). One browser for the whole session, a fresh context (cookies, storage,
permissions, time zone, viewport) for each page a test opens; a JavaScript error in
any page fails the test.

chromium comes from apt-get when /usr/bin/chromium is missing (`make test` and
.ci/run on a fresh machine); the tests are skipped, saying why, only when that
install cannot run.
"""

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service.security import callers
from tests.conftest import FakeClock, RunningServer

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"  # README, "Console"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # no lookup leaves the machine: every name but loopback fails at once
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}


def _install_chromium() -> str | None:
    """Install Debian's chromium if it is missing; why it cannot be had, if it cannot."""
    if CHROMIUM.exists():
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "no /usr/bin/chromium, and apt-get cannot run here (not Debian, or not root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
    return (
        None
        if CHROMIUM.exists()
        else "apt-get installed chromium, yet /usr/bin/chromium is missing"
    )


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    why = _install_chromium()
    if why:
        pytest.skip(f"the console's browser tests need Debian's chromium: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@dataclass
class Caller:
    name: str
    token: str
    roles: tuple[str, ...]
    projects: tuple[str, ...]


@dataclass
class Console:
    """A server with its HTTP listener, and pages opened on it in the shared browser."""

    server: RunningServer
    browser: Any
    errors: list[str] = field(default_factory=list)  # JavaScript errors, from every page
    contexts: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server.http_port}"

    def open(
        self, path: str = "/console/", viewport: dict[str, int] = WIDE, tz: str = "UTC"
    ) -> Any:
        """A page in a fresh context, at `path`."""
        context = self.browser.new_context(
            base_url=self.url,
            locale="en-US",
            timezone_id=tz,
            viewport=viewport,
            permissions=["clipboard-read", "clipboard-write"],
        )
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", self._console_message)
        page.on("pageerror", lambda e: self.errors.append(f"{e.name}: {e.message}"))
        page.set_default_timeout(10_000)
        page.goto(path)
        return page

    def _console_message(self, message: Any) -> None:
        """A JavaScript error, or an asset that failed to load. (An error page that a
        test opens on purpose also logs "Failed to load resource": that is no error
        of the page's.)"""
        if message.type != "error":
            return
        url = message.location.get("url", "")
        if message.text.startswith("Failed to load resource") and "/static/" not in url:
            return
        self.errors.append(f"{message.text} ({url})")

    def sign_in(self, caller: Caller, path: str = "/console/", **options: Any) -> Any:
        page = self.open(path, **options)
        page.get_by_label("Access token").fill(caller.token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


def screenshot(page: Any, name: str) -> None:
    """A picture of the whole page, for the README and for looking at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _console(browser: Any, server: RunningServer) -> Iterator[Console]:
    console = Console(server.start(), browser)
    yield console
    console.close()
    server.stop()
    assert not console.errors, console.errors


@pytest.fixture
def console(browser: Any, tmp_path: Path, clock: FakeClock) -> Iterator[Console]:
    """No callers file: every page acts as `anonymous`, as gRPC does."""
    server = RunningServer(tmp_path / "edgekeys.db", clock, options={"http_address": "127.0.0.1:0"})
    yield from _console(browser, server)


@pytest.fixture
def guarded(
    browser: Any, tmp_path: Path, clock: FakeClock
) -> Iterator[tuple[Console, dict[str, Caller]]]:
    """A callers file: an admin and an auditor of acme, an admin of another project,
    and `portal`, with every role everywhere (its token on the test's gRPC channel)."""
    made = {}
    tables = []
    for name, roles, projects in (
        ("admin", ("admin",), ("acme",)),
        ("auditor", ("auditor",), ("acme",)),
        ("other", ("admin", "auditor"), ("globex",)),
        ("portal", callers.ROLES, ("*",)),
    ):
        token, digest = callers.new_token()
        made[name] = Caller(name, token, roles, projects)
        tables.append(callers.caller_table(name, digest, roles, projects, None))
    path = tmp_path / "callers.toml"
    path.write_text("\n".join(tables))
    server = RunningServer(
        tmp_path / "edgekeys.db",
        clock,
        options={"http_address": "127.0.0.1:0", "callers_file": str(path)},
        token=made["portal"].token,
    )
    for console in _console(browser, server):
        yield console, made
