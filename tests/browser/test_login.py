"""Logging in with a real browser: the password the server prints on its first start."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, Page

from tests.browser.conftest import CHROMIUM_ARGS, VIEWPORT, script_errors
from tests.e2e.conftest import FAST_ENV, Cluster


def _first_start(make_database_url: Callable[[str], str], tmp_path: Path) -> Cluster:
    """A server on an empty database: it creates the first admin and prints it."""
    url = make_database_url("sqlite")
    env = {**os.environ, **FAST_ENV, "JOBBALANCER_DATABASE_URL": url}
    env["JOBBALANCER_DATA_DIR"] = str(tmp_path)
    env.pop("JOBBALANCER_CONFIG", None)
    cluster = Cluster(database_url=url, tmp=tmp_path, env=env)
    cluster.start_server()
    return cluster


def test_the_printed_admin_password_logs_in_and_out(
    browser: Browser,
    make_database_url: Callable[[str], str],
    tmp_path: Path,
    screenshot: Callable[[Page, str], Path],
) -> None:
    assert CHROMIUM_ARGS  # the browser fixture launched Chromium with these
    cluster = _first_start(make_database_url, tmp_path)
    context = browser.new_context(base_url=cluster.url, viewport=VIEWPORT)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        match = re.search(r"password:\s+(\S+)", cluster.procs[0].log())
        assert match, cluster.procs[0].log()
        password = match.group(1)

        # Given the login form at /
        page.goto("/")
        assert page.locator("input[name=password]").is_visible()
        screenshot(page, "login")

        # When a wrong password is tried, the form says so
        page.fill("input[name=name]", "admin")
        page.fill("input[name=password]", "not-" + password)
        page.click("button:has-text('Log in')")
        assert page.locator(".flash-error").inner_text() == "wrong user name or password"
        screenshot(page, "login-failed")

        # Then the printed password logs in, to the dashboard
        page.fill("input[name=password]", password)
        page.click("button:has-text('Log in')")
        page.wait_for_selector("nav")
        assert page.title().startswith("Dashboard")
        assert page.locator(".who-name").inner_text() == "admin"
        assert page.locator("nav a[aria-current=page]").inner_text() == "Dashboard"
        # every link of the nav, the admin-only ones too
        links = page.locator("nav a").all_inner_texts()
        assert links == [
            "Dashboard", "Jobs", "Schedules", "Workers", "Classes", "Scripts", "Users",
            "Notifications", "Secrets", "Activity", "Settings", "API",
        ]  # fmt: skip

        # And Logout ends the session
        page.click("button:has-text('Logout')")
        page.wait_for_selector("input[name=password]")
        assert "You are logged out." in page.locator("#flash").inner_text()
        page.goto("/")
        assert page.locator("input[name=password]").is_visible()
        assert script_errors(errors) == []
    finally:
        context.close()
        cluster.stop()


def test_nav_shows_each_role_its_pages(
    admin_page: Page, login_as: Callable[[str], Page], screenshot: Callable[[Page, str], Path]
) -> None:
    screenshot(admin_page, "dashboard-admin")
    assert admin_page.locator(".role").inner_text().lower() == "admin"
    viewer = login_as("viewer")
    assert viewer.locator(".role").inner_text().lower() == "viewer"
    assert viewer.locator("nav a").all_inner_texts() == [
        "Dashboard", "Jobs", "Schedules", "Workers", "Classes", "Scripts", "API",
    ]  # fmt: skip
    assert viewer.locator("a:has-text('Submit a job')").count() == 0
