"""Browser tests: Playwright driving Debian's Chromium against a real cluster (the e2e
harness's server and worker processes).

``playwright install`` cannot download browsers here, so the tests use
``/usr/bin/chromium`` (``apt-get install chromium``). Without it they skip, except under
CI (CI=true), where they fail. Screenshots go to ``test-artifacts/screenshots/`` (not
committed): look at them after a change to a page.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.e2e.conftest import Cluster, make_cluster

__all__ = ["Cluster", "make_cluster"]  # make_cluster is a fixture these tests use

CHROMIUM = Path(os.environ.get("JOBBALANCER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
ADMIN = ("tester", "tester-password")  # the admin tests/e2e's clusters are made with
PASSWORD = "browser-password"
VIEWPORT = {"width": 1400, "height": 900}

try:
    from playwright.sync_api import Browser, Page, Playwright, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.e2e)


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI must run the browser tests)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A server on SQLite with one worker (2 slots)."""
    c = make_cluster("sqlite")
    # The e2e harness sets a 3 s worker timeout for its recovery tests; on a busy machine
    # that declares a slow worker dead mid-test. Nothing here tests recovery.
    r = c.api.patch("/api/v1/settings", json={"worker_timeout": 30})
    assert r.status_code == 200, r.text
    c.start_worker("w1", "--allow-root", "--max-jobs", "2")
    return c


class Pages:
    """Browser pages (each its own context, so its own cookies) on one cluster."""

    def __init__(self, browser: Browser, cluster: Cluster) -> None:
        self.browser = browser
        self.cluster = cluster
        self.contexts: list[object] = []
        self.console_errors: list[str] = []

    def new(self, **options: Any) -> Page:
        context = self.browser.new_context(base_url=self.cluster.url, viewport=VIEWPORT, **options)
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        page = context.new_page()
        # A CSP violation or a script error shows up here: tests assert there is none.
        page.on(
            "console",
            lambda m: self.console_errors.append(m.text) if m.type == "error" else None,
        )
        page.on("pageerror", lambda exc: self.console_errors.append(str(exc)))
        return page

    def login(self, name: str, password: str, **options: Any) -> Page:
        """A page logged in as ``name``; ``options`` for its browser context."""
        page = self.new(**options)
        log_in(page, name, password)
        return page

    def as_role(self, role: str, name: str | None = None) -> Page:
        """A page logged in as a new user with ``role``."""
        name = name or f"{role}-user"
        r = self.cluster.api.post(
            "/api/v1/users", json={"name": name, "role": role, "password": PASSWORD}
        )
        assert r.status_code == 201, r.text
        return self.login(name, PASSWORD)

    def close(self) -> None:
        for context in self.contexts:
            context.close()  # type: ignore[attr-defined]


def log_in(page: Page, name: str, password: str) -> None:
    page.goto("/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Log in')")
    page.wait_for_url(re.compile(r"/(\?.*)?$|/[a-z]"))
    assert page.locator("nav").count() == 1, page.content()


@pytest.fixture
def pages(browser: Browser, cluster: Cluster) -> Iterator[Pages]:
    found = Pages(browser, cluster)
    yield found
    found.close()
    # Scripts run under a strict CSP: any violation or error would show in the console.
    assert script_errors(found.console_errors) == []


def script_errors(messages: list[str]) -> list[str]:
    """Console errors that are not a 4xx/5xx a test provoked on purpose."""
    return [m for m in messages if not m.startswith("Failed to load resource")]


@pytest.fixture
def admin_page(pages: Pages) -> Page:
    """A page logged in as the cluster's admin."""
    return pages.login(*ADMIN)


@pytest.fixture
def login_as(pages: Pages) -> Callable[[str], Page]:
    """login_as("viewer") → a page logged in as a new user with that role."""
    return pages.as_role


@pytest.fixture
def screenshot() -> Callable[[Page, str], Path]:
    """screenshot(page, "jobs") → test-artifacts/screenshots/jobs.png (the whole page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: Page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
